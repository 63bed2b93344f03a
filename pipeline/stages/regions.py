"""Stage `regions`: Faster R-CNN boxes, scores, labels and RoI features, one shard per slice.
Resumable; ``--shard i/n`` (or torchrun's RANK/WORLD_SIZE) computes only this rank's shards."""
from pipeline.app import run_main
from pipeline.feature_stage import run_stage


def main() -> None:
    run_stage("regions")


if __name__ == "__main__":
    run_main(main)
