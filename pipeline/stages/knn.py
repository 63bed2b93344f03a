"""Stage `knn`: per-image K-nearest-neighbour graphs over the stored regions. Resumable, by rank."""
from pipeline.app import run_main
from pipeline.feature_stage import run_stage


def main() -> None:
    run_stage("knn")


if __name__ == "__main__":
    run_main(main)
