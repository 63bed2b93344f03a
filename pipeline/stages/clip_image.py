"""Stage `clip_image`: CLIP global image embeddings, one shard per manifest slice.
Resumable; ``--shard i/n`` (or torchrun's RANK/WORLD_SIZE) computes only this rank's shards."""
from pipeline.app import run_main
from pipeline.feature_stage import run_stage


def main() -> None:
    run_stage("clip_image")


if __name__ == "__main__":
    run_main(main)
