"""Stage `region_keywords`: each region's local keywords, from the detector's labels or by FAISS
retrieval over the CLIP-encoded object bank with the region crop's CLIP embedding."""
from pipeline.app import run_main
from pipeline.feature_stage import run_stage


def main() -> None:
    run_stage("region_keywords")


if __name__ == "__main__":
    run_main(main)
