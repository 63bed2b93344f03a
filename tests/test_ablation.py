"""The ablation registry and table: variants switch only their modules; mean ± std over seeds."""
import dataclasses
import json
import math

import pytest

from eval.ablation import (
    PHRASE_GROUNDINGS,
    REGION_CROPS,
    VARIANTS,
    check_variants,
    markdown,
    summarize,
    to_csv,
    variant,
)
from pipeline.params import load_params
from pipeline.paths import ABLATION_CELLS, ABLATION_DATA
from pipeline.stages.ablation import variant_params
from tests.conftest import ROOT, tiny_project


def test_variants_change_only_switches_and_schedule():
    params = load_params(ROOT / "params.yaml")
    for name in VARIANTS:
        p = variant_params(params, name, seed=7)
        changed = {f.name for f in dataclasses.fields(p.model) if getattr(p.model, f.name) != getattr(params.model, f.name)}
        assert changed <= {"regions", "normalize_clip", "gat", "global_guidance", "local_guidance", "condition",
                           "prefix_regions", "region_order", "region_token_skip", "box_embedding", "edge_geometry",
                           "region_features", "spatial_directions", "spatial_context", "spatial_tokens",
                           "spatial_token_order", "local_text", "region_adapter"}
        assert (p.train.seed, p.train.phase1_epochs, p.train.phase2_epochs) == (
            7, params.ablation.phase1_epochs, params.ablation.phase2_epochs)
        assert (p.train.lr, p.evaluate.split, p.evaluate.decode.method) == (
            params.train.lr, params.evaluate.split, params.evaluate.decode.method)
    modules = ("gat", "global_guidance", "local_guidance")
    assert not any(variant("baseline").model[m] for m in modules) and all(variant("gat_msg").model[m] for m in modules)
    for name in ("baseline", "gat_msg"):  # the paper's rows keep the paper's regions whatever params.yaml says
        paper = variant_params(params, name, 0)
        assert (paper.model.prefix_regions, paper.model.box_embedding, paper.model.region_features,
                paper.model.spatial_directions, paper.knn.metric) == ("mean", False, "detector", 0, "cosine")
    grounded = {name for name in VARIANTS if variant_params(params, name, 0).train.loss.grounding_weight > 0}
    assert grounded == {"local_detail_grounded", "local_detail_grounded_bins",
                        "local_detail_grounded_top_down"}  # whatever params.yaml says
    main = variant_params(params, "local_detail_grounded_top_down", 0).model
    assert (main.spatial_context, main.spatial_directions, main.spatial_tokens, main.spatial_token_order) == (
        "bins", 8, True, "top_down")
    assert variant_params(params, "local_detail_grounded_bins", 0).model.spatial_token_order == "same"
    assert not variant_params(params, "local_detail_bins", 0).model.spatial_tokens  # bins added to each region's token
    assert variant_params(params, "local_detail_bins", 0).model.spatial_context == "bins"
    assert variant_params(params, "local_detail_spatial", 0).model.spatial_context == "gates"
    assert variant_params(params, "text_only", 0).train.mode == "text_only"
    assert not variant_params(params, "clip_prefix", 0).model.regions
    keywords = variant_params(params, "keyword_only", 0)
    assert (keywords.model.condition, keywords.evaluate.decode.rerank) == ("keywords", "clip")
    labelled, semi = variant_params(params, "labelled_subset", 0).train, variant_params(params, "semi_supervised", 0).train
    assert labelled.labelled_fraction == semi.labelled_fraction == params.ablation.labelled_fraction < 1
    assert (labelled.scst_epochs, semi.scst_epochs) == (0, params.ablation.scst_epochs)
    assert variant_params(params, "gat_msg", 0).train.labelled_fraction == 1
    with pytest.raises(ValueError, match="ablation.variants: unknown variant 'gcn'"):
        variant("gcn")


def test_an_unknown_variant_in_params_stops_loading(tmp_path):
    text = (ROOT / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    assert "\n  - clip_prefix\n" in text  # ablation.variants' first row, a block list as DVC writes it
    path.write_text(text.replace("\n  - clip_prefix\n", "\n  - tokens_geometry\n  - clip_prefix\n", 1))
    with pytest.raises(ValueError, match="unknown variant 'tokens_geometry'"):
        load_params(path)


def test_table_has_mean_and_sample_std_over_seeds():
    results = {"baseline": {0: {"CIDEr": 1.0, "BLEU-4": 0.5}, 1: {"CIDEr": 3.0, "BLEU-4": 0.5}},
               "gat_msg": {0: {"CIDEr": 2.0, "BLEU-4": None}}}  # None: not measured (JSON null)
    rows = summarize(results)
    assert rows[0]["CIDEr"] == pytest.approx({"mean": 2.0, "std": 2 ** 0.5})
    assert rows[0]["BLEU-4"] == {"mean": 0.5, "std": 0.0} and rows[1]["CIDEr"] == {"mean": 2.0, "std": 0.0}
    table = markdown(rows).splitlines()
    assert table[0] == "| model | seeds | BLEU-4 | CIDEr |"
    assert table[2] == "| Baseline: CLIP + regions + GPT-2 | 2 | 0.500 ± 0.000 | 2.000 ± 1.414 |"
    assert table[3].endswith("| – | 2.000 ± 0.000 |")  # a metric a row lacks is a dash, not a zero
    assert "BLEU-4" not in rows[1]
    assert to_csv(rows).splitlines()[1].startswith("baseline,Baseline: CLIP + regions + GPT-2,2,0.500000,0.000000")


def test_cells_of_related_captioners_and_other_graphs_run_through_the_stage(tmp_path):
    """keyword_only (re-ranked by the pipeline's CLIP), semi_supervised (its SCST reward from the same
    text tower) and a cell with other KNN graphs than the store's (computed into its own store
    folder, the shared graphs untouched), each trained and evaluated by the real ablation stage."""
    from pipeline.stages import (
        ablation,
        clip_image,
        clip_text,
        knn,
        prepare,
        region_clip,
        region_keywords,
        regions,
        world,
    )

    project = tiny_project(tmp_path, (world, prepare, clip_image, regions, clip_text, knn, region_keywords, region_clip),
                           n_train=8, train={"batch_size": 4, "val_images": 2},
                           ablation={"phase1_epochs": 1, "phase2_epochs": 1, "labelled_fraction": 0.25,
                                     "scst_epochs": 1})
    shared_graphs = {p: p.read_bytes() for p in (project / "data/features/knn").glob("*.h5")}
    for variant_name in ("keyword_only", "semi_supervised", "local_detail_knn_center"):
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(project)
            patch.setattr("sys.argv", ["ablation", variant_name, "0"])
            ablation.main()
        metrics = json.loads((project / ABLATION_CELLS / f"{variant_name}-0.json").read_text())
        assert metrics["variant"] == variant_name and metrics["n_images"] == 2 and math.isfinite(metrics["CIDEr"])
    assert {p: p.read_bytes() for p in (project / "data/features/knn").glob("*.h5")} == shared_graphs
    assert not any((project / "models/ablations").iterdir())  # each cell cleans up after itself


def test_figures_with_nothing_to_measure_are_written_as_json_null(tmp_path):
    import json

    from features.files import write_json

    write_json(tmp_path / "m.json", {"world/relation_accuracy": float("nan"), "per": [{"x": float("nan")}, 1.5]})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text
    assert json.loads(text) == {"world/relation_accuracy": None, "per": [{"x": None}, 1.5]}


def test_variants_needing_what_the_data_set_lacks_are_refused_before_training(tmp_path, monkeypatch, capsys):
    from pipeline.stages import ablation_check

    grounded = {name for name in VARIANTS if PHRASE_GROUNDINGS in variant(name).needs}
    assert grounded == {"local_detail_grounded", "local_detail_grounded_bins", "local_detail_grounded_top_down"}
    world = {"dataset": "demo_world", "images": [{"split": "train", "extra": {"objects": []}}, {"split": "test"}]}
    coco = {"dataset": "coco", "images": [{"split": "train", "extra": {}}, {"split": "train"}]}
    assert ablation_check.data_offers(world) == {PHRASE_GROUNDINGS} and ablation_check.data_offers(coco) == set()
    check_variants(["gat_msg", "local_detail_grounded"], {PHRASE_GROUNDINGS, REGION_CROPS}, "demo_world")  # allowed
    with pytest.raises(ValueError, match="'local_detail' needs region crop embeddings.*store.optional_kinds"):
        check_variants(["local_detail"], {PHRASE_GROUNDINGS}, "demo_world")  # its regions: detector and crop features
    with pytest.raises(ValueError, match="'local_detail_grounded' needs phrase groundings.*'coco'"):
        check_variants(["gat_msg", "local_detail_grounded", "baseline"], set(), "coco")
    check_variants(load_params(ROOT / "presets/paper.yaml").ablation.variants, set(), "coco")  # the paper's rows: none

    project = tiny_project(tmp_path, ablation={"variants": ["baseline", "local_detail_grounded_bins"]})
    (project / "data").mkdir()
    (project / "data/manifest.json").write_text(json.dumps(coco))
    monkeypatch.chdir(project)
    with pytest.raises(ValueError, match="'local_detail_grounded_bins' needs phrase groundings"):
        ablation_check.main()
    assert not (project / ABLATION_DATA).exists()  # no cell can start
