"""Stage `world`: generate the demo world (images + Karpathy JSON) into data/world."""

from pipeline.app import run_main, start
from pipeline.paths import WORLD
from world.generate import generate_world


def main() -> None:
    params = start()
    generate_world(params.world, WORLD)


if __name__ == "__main__":
    run_main(main)
