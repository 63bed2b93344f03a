"""Stage `ablation_table`: the ablation cells → results/ablations.{md,csv} (mean ± std over seeds)
and results/ablations.json (a DVC metrics file, so `dvc exp show` and `dvc metrics show` list it)."""
import json

from eval.ablation import markdown, summarize, to_csv
from features.files import write_json
from pipeline.app import run_main, start
from pipeline.paths import ABLATION_CELLS, ABLATION_TABLE


def main() -> None:
    params = start()
    results: dict[str, dict[int, dict]] = {}
    for variant in params.ablation.variants:
        for seed in params.ablation.seeds:
            path = ABLATION_CELLS / f"{variant}-{seed}.json"
            if not path.exists():
                raise FileNotFoundError(f"{path}: missing ablation cell (run `dvc repro ablation`)")
            results.setdefault(variant, {})[seed] = json.loads(path.read_text())
    rows = summarize(results)
    ABLATION_TABLE.with_suffix(".md").write_text(markdown(rows))
    ABLATION_TABLE.with_suffix(".csv").write_text(to_csv(rows))
    write_json(ABLATION_TABLE.with_suffix(".json"), {r["variant"]: {k: v for k, v in r.items() if isinstance(v, dict)}
                                                for r in rows})
    print(markdown(rows))


if __name__ == "__main__":
    run_main(main)
