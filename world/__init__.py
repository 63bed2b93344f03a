"""The demo world: a generated, captioned image data set that needs no download.

The bottom layer of the project: it imports nothing of ours. :mod:`world.grammar` is the one
place that knows how the world's captions are worded, both to write them and to read them back
(evaluation, phrase groundings); :mod:`world.generate` draws the images and writes the data set.
"""
