"""Tools run from a checkout, not installed with the packages: the demo encoders' training and the
paper-size check of the whole main job."""
