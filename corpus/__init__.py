"""Data sets as users have them (Karpathy split JSON, COCO caption annotations, Flickr token files)
read into the manifest every later stage indexes: its format, captions normalised, splits."""
