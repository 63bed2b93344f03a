"""Stage `clip_text`: CLIP text embeddings of every caption (sharded like the images) and of the
scene and object keyword banks (keywords.h5)."""

import numpy as np

from features.clip import encode_texts, load_clip
from features.detection import load_class_names
from features.keywords import object_bank_words, scene_keywords
from features.shards import Rank, for_each_shard
from features.store import write_bank
from pipeline.app import load_manifest, run_main, start
from pipeline.paths import keyword_banks
from pipeline.provenance import expected, keyword_bank
from pipeline.runtime import device_of


def main() -> None:
    rank = Rank.from_args()
    params = start()
    manifest = load_manifest()
    clip = load_clip(params.clip, device_of(params.store.device), params.store.precision)
    batch = params.clip.batch_size

    def compute(shard: int, entries: list[dict], progress) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        captions = [c for e in entries for c in e["captions"]]
        offsets = np.cumsum([0] + [len(e["captions"]) for e in entries]).astype(np.int64)
        embeddings = encode_texts(clip, captions, batch).astype(np.float16)
        progress(len(entries))
        return {"embeddings": embeddings, "offsets": offsets}, {}

    for_each_shard(params.store, manifest, "clip_text", expected(params)["clip_text"], compute, rank)
    if rank.index != 0:
        return  # the keyword banks are written once, by rank 0

    classes = load_class_names(params.regions.classes)
    train_captions = [c for e in manifest["images"] if e["split"] == "train" for c in e["captions"]]
    banks = {"scene": scene_keywords(params.keywords, train_captions, classes),
             "object": object_bank_words(params.keywords, classes)}
    bank_file = keyword_banks(params.store.dir)
    for name, words in banks.items():
        prompts = [params.keywords.prompt.format(w) for w in words]
        write_bank(bank_file, name, words, encode_texts(clip, prompts, batch), keyword_bank(params))


if __name__ == "__main__":
    run_main(main)
