"""Stage `ablation_table`: the ablation cells → results/ablations.{md,csv} (mean ± std over seeds)
and results/ablations.json (a DVC metrics file, so `dvc exp show` and `dvc metrics show` list it)."""
import json
from pathlib import Path

from eval.ablation import markdown, summarize, to_csv
from pipeline.stages.ablation import RESULTS
from pipeline.stages.common import run_main, start, write_json


def main() -> None:
    params = start()
    results: dict[str, dict[int, dict]] = {}
    for variant in params.ablation.variants:
        for seed in params.ablation.seeds:
            path = RESULTS / f"{variant}-{seed}.json"
            if not path.exists():
                raise FileNotFoundError(f"{path}: missing ablation cell (run `dvc repro ablation`)")
            results.setdefault(variant, {})[seed] = json.loads(path.read_text())
    rows = summarize(results)
    Path("results/ablations.md").write_text(markdown(rows))
    Path("results/ablations.csv").write_text(to_csv(rows))
    write_json(Path("results/ablations.json"), {r["variant"]: {k: v for k, v in r.items() if isinstance(v, dict)}
                                                for r in rows})
    print(markdown(rows))


if __name__ == "__main__":
    run_main(main)
