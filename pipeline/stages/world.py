"""Stage `world`: generate the demo world (images + Karpathy JSON) into data/world."""
from pathlib import Path

from pipeline.stages.common import run_main, start
from world.generate import generate_world


def main() -> None:
    params = start()
    generate_world(params.world, Path("data/world"))


if __name__ == "__main__":
    run_main(main)
