"""Stage `region_clip`: CLIP image embeddings of every stored region's crop. Resumable, by rank."""
from pipeline.app import run_main
from pipeline.feature_stage import run_stage


def main() -> None:
    run_stage("region_clip")


if __name__ == "__main__":
    run_main(main)
