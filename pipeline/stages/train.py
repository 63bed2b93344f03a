"""Stage `train`: the captioner on cached features → models/captioner (best by validation CIDEr).

Data-parallel on N processes (gloo on CPU, nccl on GPUs; ``train.batch_size`` stays the global
batch): ``torchrun --standalone --nproc_per_node N -m pipeline.stages.train``."""
from features.files import write_json
from pipeline.app import run_main, start
from pipeline.paths import CAPTIONER, CHECKPOINT, MANIFEST, TRAIN_SCORES, TRAINING_LOG
from pipeline.runtime import device_of
from pipeline.training import train_captioner
from train.distributed import process_group


def main() -> None:
    params = start()
    device = device_of(params.store.device)
    with process_group(device) as world:  # under torchrun: DDP, rank 0 validates and writes
        best = train_captioner(params, MANIFEST, CAPTIONER, TRAINING_LOG, CHECKPOINT, world)
        if world.is_main:
            write_json(TRAIN_SCORES, best)


if __name__ == "__main__":
    run_main(main)
