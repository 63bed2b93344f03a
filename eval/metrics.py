"""Caption metrics with pycocoevalcap, the toolkit captioning papers report.

BLEU-1..4, METEOR, ROUGE-L and CIDEr always (METEOR and the PTB tokenizer need Java). SPICE runs
only where Stanford CoreNLP 3.6.0's jars already sit in pycocoevalcap's ``spice/lib`` folder:
pycocoevalcap would otherwise download them, and nothing here downloads at run time. Scores are
on pycocoevalcap's scale (papers quote them ×100). Works from a read-only install (see
:func:`ptb_tokenize`).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.spice import spice as spice_module
from pycocoevalcap.tokenizer import ptbtokenizer

log = logging.getLogger(__name__)

SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


# the figures `dvc metrics show` prints by default (results/headline.json), so its table fits a
# terminal; every figure is in results/metrics.json (`dvc metrics show results/metrics.json`)
HEADLINE = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "CLIPScore", "world/object_precision", "world/object_recall",
            "world/relation_accuracy")


def headline(metrics: dict) -> dict:
    """The headline figures of ``metrics`` (those it has: the world/* ones only on the demo world)."""
    return {key: metrics[key] for key in HEADLINE if key in metrics}


def spice_unavailable_reason() -> str | None:
    """None when SPICE can run; otherwise why not."""
    lib = Path(spice_module.__file__).parent / "lib"
    missing = [jar for jar in SPICE_JARS if not (lib / jar).is_file()]
    if missing:
        # the folder relative to site-packages, so that metrics files do not depend on the install path
        return (f"Stanford CoreNLP jars missing from pycocoevalcap/spice/lib: {', '.join(missing)} "
                "(place them there to enable SPICE)")
    if shutil.which("java") is None:
        return "java not found"
    return None


def require_java() -> None:
    if shutil.which("java") is None:
        raise RuntimeError("pycocoevalcap needs Java for METEOR and the PTB tokenizer: "
                           "install a JRE (Debian: apt-get install default-jre-headless)")


def coco_scores(references: dict[str, list[str]], candidates: dict[str, str]) -> tuple[dict[str, float], dict]:
    """Corpus scores and per-image scores for candidates against their references (same keys).

    Returns ({"BLEU-1": …, "CIDEr": …, "SPICE"?: …}, {"CIDEr": {image_id: score}, …}).
    """
    gts, res = _tokenize(references, candidates)
    scorers = [(Bleu(4), ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"]), (Meteor(), ["METEOR"]),
               (Rouge(), ["ROUGE-L"]), (Cider(), ["CIDEr"])]
    if spice_unavailable_reason() is None:
        scorers.append((spice_module.Spice(), ["SPICE"]))
    ids = list(gts)  # the order every scorer iterates in
    corpus, per_image = {}, {}
    for scorer, names in scorers:
        score, scores = scorer.compute_score(gts, res)
        if len(names) == 1:
            score, scores = [score], [scores]
        for name, s, ss in zip(names, score, scores):
            corpus[name] = float(s)
            per_image[name] = {i: _as_float(v) for i, v in zip(ids, ss)}
    return corpus, per_image


def cider(references: dict[str, list[str]], candidates: dict[str, str]) -> float:
    """CIDEr alone (PTB-tokenized), for cheap validation during training."""
    gts, res = _tokenize(references, candidates)
    return float(Cider().compute_score(gts, res)[0])


def human_cider(references: dict[str, list[str]]) -> float:
    """The usual "human" CIDEr: each reference scored against the other references of its image
    (leave-one-out) and averaged over references — what a human-written caption scores, a ceiling
    to read a model's CIDEr against (slightly low: it is scored against one reference fewer).

    Fold k holds out reference k of every image and is one :func:`cider` call, so the IDF comes
    from the remaining references as when a model is scored. With unequal reference counts the
    folds run over the smallest count (extra references stay references in every fold). NaN,
    with a warning, when some image has fewer than two references.
    """
    n = min(len(captions) for captions in references.values())
    if n < 2:
        log.warning("human CIDEr needs at least two references per image; some image has %d", n)
        return float("nan")
    folds = [cider({i: captions[:k] + captions[k + 1:] for i, captions in references.items()},
                   {i: captions[k] for i, captions in references.items()}) for k in range(n)]
    return sum(folds) / n


def ptb_tokenize(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    """pycocoevalcap's tokenization (Stanford PTBTokenizer, lower-cased, punctuation tokens
    dropped), with the same jar and output, but its temporary file in the system's temp folder:
    pycocoevalcap's own ``PTBTokenizer`` writes it inside the installed package, which fails on a
    read-only install."""
    require_java()
    jar = Path(ptbtokenizer.__file__).parent / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR
    keys = [k for k, caps in captions.items() for _ in caps]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="graphcap-ptb-", delete=False, encoding="utf-8") as f:
        f.write("\n".join(c.replace("\n", " ") for caps in captions.values() for c in caps))
    try:
        out = subprocess.run(["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
                              "-lowerCase", f.name], capture_output=True, check=True).stdout.decode()
    finally:
        os.unlink(f.name)
    tokenized: dict[str, list[str]] = {}
    for key, line in zip(keys, out.split("\n")):
        words = [w for w in line.rstrip().split(" ") if w not in ptbtokenizer.PUNCTUATIONS]
        tokenized.setdefault(key, []).append(" ".join(words))
    return tokenized


def _tokenize(references: dict[str, list[str]], candidates: dict[str, str]) -> tuple[dict, dict]:
    """PTB-tokenize both sides, as the COCO evaluation server does."""
    if set(references) != set(candidates):
        raise ValueError("references and candidates must cover the same image ids")
    return ptb_tokenize(references), ptb_tokenize({k: [candidates[k]] for k in references})


def _as_float(value) -> float:
    return float(value["All"]["f"]) if isinstance(value, dict) else float(value)
