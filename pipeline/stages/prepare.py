"""Stage `prepare`: data set (Karpathy JSON) → data/manifest.json with normalised captions."""
from pathlib import Path

from corpus.datasets import build_manifest, write_manifest
from pipeline.app import MANIFEST, run_main, start


def main() -> None:
    params = start()
    manifest = build_manifest(Path(params.data.dataset), Path(params.data.image_root), params.prepare,
                              params.data.max_images, params.data.max_caption_chars, params.data.split)
    write_manifest(MANIFEST, manifest)


if __name__ == "__main__":
    run_main(main)
