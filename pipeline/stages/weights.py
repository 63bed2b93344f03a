"""Stage `weights`: every pretrained input the parameters name (CLIP, the detector, GPT-2 and its
tokenizer), from a local file or folder or the hub's local cache, → weights/ (pipeline/weights.py).
Offline with a hub name that is not cached, it stops with one line saying what is missing and how
to get it, naming every missing input at once.

    python -m pipeline.stages.weights --check   (what `make repro` runs before `dvc repro`: only
    resolves, so a missing input is said before DVC touches weights/ or fails on a missing file)"""
import argparse

from features.clip import clip_activation
from pipeline.app import run_main, start
from pipeline.weights import clip_settings, copy_into, resolve, sources


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true", help="resolve every input, copy nothing")
    check = parser.parse_args().check
    params = start(localised=False)  # the sources as params.yaml gives them
    if check:
        resolve(params)
        return
    record = {"sources": sources(params), "clip": clip_settings(params), "clip_activation": clip_activation(params.clip)}
    copy_into(resolve(params), record)


if __name__ == "__main__":
    run_main(main)
