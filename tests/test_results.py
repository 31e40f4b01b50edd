"""`make results`: the CLI trains where the notebook reads back, and publishing copies whole, small files."""

from __future__ import annotations

import base64
import io
import json

import nbformat
import numpy as np
import pytest
from PIL import Image

from histolab_utils import results
from histolab_utils.paths import results_dir
from histolab_utils.stages import stage


def typed(name: str, record: dict):
    """The published cpu record of stage ``name``, typed, with the stamp keys and metrics of ``record`` in place
    (the cards below are checked on these made-up values)."""
    from dataclasses import replace

    published = stage(name).read_record("cpu")
    stamp = replace(published.stamp, **{k: v for k, v in record.items() if k != "metrics"})
    unknown = set(record["metrics"]) - set(published.metric_names())
    assert not unknown, unknown
    return replace(published, stamp=stamp, **record["metrics"])


def noise_png(size: int) -> str:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture
def executed_run(isolated_dirs, monkeypatch):
    """A finished cpu run of notebook 03 in reports/: metrics, a figure and an executed notebook with a big image."""
    monkeypatch.setenv("HISTO_ROOT", str(isolated_dirs))
    reports = isolated_dirs / "reports" / "cpu"
    (reports / "metrics").mkdir(parents=True)
    (reports / "metrics" / "03_ddpm_schedulers.json").write_text(json.dumps({"profile": "cpu", "metrics": {}}))
    (reports / "figures").mkdir()
    Image.new("RGB", (64, 64), (200, 100, 180)).save(reports / "figures" / "03_ddpm_schedulers-cosine-ddim.png")
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("plt.imshow(grid)")
    cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": noise_png(600), "text/plain": "x"})]
    nb.cells = [cell, nbformat.v4.new_code_cell("print(1)")]
    (reports / "executed").mkdir()
    nbformat.write(nb, reports / "executed" / "03_ddpm_schedulers.ipynb")
    return isolated_dirs


def test_the_cli_trains_every_model_into_the_folder_the_notebook_resumes_from():
    from histolab_utils.config import load_config

    commands = results.training_commands("03_ddpm_schedulers", "cpu")
    models = load_config("cpu").ddpm.models
    assert len(commands) == len(models)
    for command, (schedule, prediction) in zip(commands, models):
        assert command[2:4] == ["histolab_utils.train", "ddpm"] and "--resume" in command
        out = command[command.index("--out") + 1]
        assert out.endswith(f"cpu/03_ddpm_schedulers/{schedule}-{prediction}")
        assert command[command.index("--profile") + 1] == "cpu"
    vqgan = load_config("cpu").vqgan
    commands = results.training_commands("02_vqgan", "cpu")
    assert len(commands) == len(vqgan.latent_channels)
    for command, channels in zip(commands, vqgan.latent_channels):
        assert command[2:4] == ["histolab_utils.train", "vqgan"] and "--resume" in command
        assert command[command.index("--latent-channels") + 1] == str(channels)
        assert command[command.index("--out") + 1] == str(stage("vqgan").run_folder_of("cpu", channels))
    assert results.training_commands("09_augmentation_experiments", "cpu") == []


def test_publish_copies_metrics_figures_and_a_compacted_notebook(executed_run):
    big = (executed_run / "reports" / "cpu" / "executed" / "03_ddpm_schedulers.ipynb").stat().st_size
    written = results.publish("03_ddpm_schedulers", "cpu")
    target = results_dir("cpu")
    assert sorted(p.name for p in written) == sorted(
        ["03_ddpm_schedulers.json", "03_ddpm_schedulers.ipynb", "03_ddpm_schedulers-cosine-ddim.png"])
    published = nbformat.read(target / "03_ddpm_schedulers.ipynb", as_version=4)
    data = published.cells[0].outputs[0]["data"]
    assert "image/jpeg" in data and "image/png" not in data, "the noise grid is re-encoded"
    assert (target / "03_ddpm_schedulers.ipynb").stat().st_size < big / 2
    assert not list(target.glob(".*")), "no temporary file is left in results/"


def test_a_saved_plot_is_published_and_a_figure_named_otherwise_is_not(executed_run):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from histolab_utils.report import save_plot

    figure, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [1, 0])
    saved = save_plot("03_ddpm_schedulers", "losses", figure, profile="cpu")
    plt.close(figure)
    figure.savefig(saved.with_name("03_losses.png"))  # not the notebook's prefix: never published
    names = {p.name for p in results.publish("03_ddpm_schedulers", "cpu")}
    assert saved.name == "03_ddpm_schedulers-losses.png" and saved.name in names and "03_losses.png" not in names
    assert Image.open(results_dir("cpu") / saved.name).format == "PNG"
    assert not list(saved.parent.glob(".*")), "no temporary file is left beside the figure"
    # what sticks out of the figure (a long axis label, a legend below it) is saved, as the notebook shows it
    figure, ax = plt.subplots(figsize=(1, 1))
    ax.set_xlabel("a label much wider than the one-inch figure it belongs to")
    wide = save_plot("03_ddpm_schedulers", "wide", figure, profile="cpu", dpi=80)
    plt.close(figure)
    assert Image.open(wide).width > 2 * 80


def test_publish_refuses_what_is_missing_or_too_big(executed_run, monkeypatch):
    monkeypatch.setattr(results, "MAX_NOTEBOOK_BYTES", 1000)
    with pytest.raises(ValueError, match="over the 0 MB limit"):
        results.publish("03_ddpm_schedulers", "cpu")
    assert not results_dir("cpu").exists(), "nothing is half-published"
    with pytest.raises(FileNotFoundError, match="run the notebook in the cpu profile first"):
        results.publish("05_conditional_ldm", "cpu")


def test_smoke_is_never_published(capsys):
    with pytest.raises(SystemExit):
        results.main(["--profile", "smoke", "--only", "03"])
    assert "smoke numbers are never results" in capsys.readouterr().err


def test_the_model_card_states_data_split_scores_floors_licences_and_use():
    record = {"profile": "cpu", "git_commit": "abc123", "metrics": {
        "rows": [{"schedule": "cosine", "prediction": "v_prediction", "sampler": "ddim", "steps": 50,
                  "fid_vs_heldout": 80.0, "kid_vs_heldout": 0.05, "fid_vs_train": 70.0, "precision": 0.6,
                  "recall": 0.3, "near_copy_fraction": 0.0}],
        "floor": {"fid_train_vs_heldout": 60.0, "fid_train_vs_train": 40.0}, "image_size": 32, "downsample": 2,
        "released_model": "ddpm-cosine-v-cpu", "train_seconds": {"cosine · v": 1500.0}, "n_eval": 500,
        "train_steps": 2500, "batch_size": 32, "n_train_crops": 8192, "hardware": "cpu (2 cores)",
        "best_model_rule": "lowest DDIM FID against a train-region draw",
        "models": [["linear", "epsilon"], ["linear", "v_prediction"], ["cosine", "v_prediction"], ["sigmoid", "v_prediction"]]}}
    card = stage("ddpm").card(typed("ddpm", record), "cosine-v_prediction", "ddpm-cosine-v-cpu")
    for needed in ("not for diagnosis", "held-out", "n = 500", "**60.0**", "**40.0**", "| ddim | 50 | 80.0 |",
                   "BSD-3-Clause", "MIT", "Apache-2.0", "25 min of training", "2500 optimiser steps",
                   "DDPMPipeline.from_pretrained", "Salimans & Ho (2022)", "best of the 4 models"):
        assert needed in card, needed
    assert "Its sampler of lowest held-out FID (ddim) scores FID 80.0" in card  # a record without validation scores
    # with validation scores the card's best sampler is chosen on them, not on held-out
    rows = record["metrics"]["rows"]
    rows[0]["fid_vs_validation"] = 75.0
    rows.append({**rows[0], "sampler": "dpm", "steps": 20, "fid_vs_heldout": 78.0, "fid_vs_validation": 77.0})
    card = stage("ddpm").card(typed("ddpm", record), "cosine-v_prediction", "ddpm-cosine-v-cpu")
    assert "Its best sampler on the validation draw (ddim) scores FID 80.0 against held-out" in card


def test_the_spade_and_joint_cards_state_scores_beside_floors_checks_goals_and_use():
    def scores(fid, dice):  # the notebooks leave a score out where a set has none
        row = {"fid": fid, "kid": None if fid is None else fid / 1000, "dice": dice, "n": 500.0}
        return {k: v for k, v in row.items() if v is not None}

    checks = [{"check": "recall above s = 0", "measured": 0.8, "bar": 0.5, "passes": True}]
    goals = [{"goal": "FID over the real-vs-real floor", "target": "<= 1.5", "measured": 1.8, "met": False}]
    spade = {"profile": "cpu", "git_commit": "abc", "hardware": "CPU (2 cores)", "metrics": {
        "tile_size": 32, "downsample": 2, "guidance_scale": 1.5, "sampler": "DDPM, learned variance",
        "sampler_steps": 25, "n": 500, "n_validation": 250, "train_steps": {"pixel": 1100, "latent": 3000},
        "train_seconds": {"pixel": 1740.0, "latent": 1080.0}, "floor_real_vs_real": scores(20.0, None),
        "nasdm_pixel_real_masks": scores(36.0, 0.61), "pixel_unguided": scores(40.0, 0.5),
        "nasdm_pp_pixel_generated_masks": scores(45.0, 0.6), "latent_real_masks": scores(50.0, 0.55),
        "latent_generated_masks": scores(55.0, 0.5), "fidelity_reference_real_pairs": scores(None, 0.6),
        "fidelity_floor_mismatched_pairs": scores(None, 0.2), "checks": checks, "goals": goals,
        "appearance": {"pixel, real masks, s = 1.5": {"n": 300.0, "distance": 0.9, "distance_lo": 0.8,
                                                      "distance_hi": 1.0, "over_floor": 2.25, "w_h_mean": 1.5},
                       "latent, real masks, s = 1.5": {"n": 300.0, "distance": 1.2, "distance_lo": 1.1,
                                                       "distance_hi": 1.3, "over_floor": 3.0, "w_h_mean": 2.5},
                       "real (train vs held-out)": {"n": 300.0, "distance": 0.4, "distance_lo": 0.3,
                                                    "distance_hi": 0.5, "over_floor": 1.0, "w_h_mean": 0.3}},
        "appearance_shifts": {"pixel, real masks, s = 1.5": {"reading": "darker (+1.9)"}}}}
    pixel = stage("spade").card(typed("spade", spade), "pixel", "spade-pixel-cpu")
    for needed in ("not for diagnosis", "n = 500 held-out", "250 validation pairs", "| real-vs-real floor (train crops) | 20 |",
                   "| model, real held-out masks | 36 | 0.036 | 0.61 | 500 |", "DDPM, learned variance",
                   "29 min of training", "MaskToImagePipeline.from_pretrained", "| recall above s = 0 | 0.800 | 0.5 | yes |",
                   "| FID over the real-vs-real floor | <= 1.5 | 1.80 | no |", "Licence", "Shrivastava & Fletcher",
                   "| model, real held-out masks | 0.900 | 0.800-1.000 | 2.25 | 1.500 | 300 |",
                   "| real (train vs held-out) | 0.400 | 0.300-0.500 | 1.00 | 0.300 | 300 |", "read: darker (+1.9)",
                   "no realism score"):
        assert needed in pixel, needed
    latent = stage("spade").card(typed("spade", spade), "latent", "spade-latent-cpu")
    assert "| model, notebook 06's generated masks | 55 |" in latent and "vqvae" in latent and "spade-pixel-cpu" in latent
    assert "| model, real held-out masks | 1.200 | 1.100-1.300 | 3.00 | 2.500 | 300 |" in latent
    joint = {"profile": "cpu", "git_commit": "abc", "hardware": "CPU (2 cores)", "metrics": {
        "tile_size": 32, "downsample": 2, "guidance_scale": 2.0, "sampler_steps": 25, "n": 500, "n_validation": 250,
        "train_steps": 3000, "train_seconds": 1920.0, "floor_real_vs_real": scores(20.0, None),
        "joint": {"joint, held-out layouts, s = 2": {**scores(30.0, 0.5), "located_fraction": 0.9}},
        "head_to_head": {"two-stage, real mask (oracle)": {**scores(36.0, 0.6), "located_fraction": 0.95}},
        "label_consistency_reference_real_pairs": scores(None, 0.6),
        "label_consistency_floor_mismatched_pairs": scores(None, 0.2), "checks": checks, "goals": goals}}
    card = stage("joint").card(typed("joint", joint), "", "joint-cpu")
    for needed in ("not for diagnosis", "| joint, held-out layouts, s = 2 | 30 | 0.03 | 0.5 | 0.9 |  |  |",
                   "| two-stage, real mask (oracle) | 36 |", "32 min of training", "JointSynthesisPipeline.from_pretrained",
                   "CoSyn", "| recall above s = 0 | 0.800 | 0.5 | yes |", "250 validation pairs"):
        assert needed in card, needed


def test_an_older_vqgan_record_is_read_under_its_old_key_names_and_one_without_them_is_refused():
    """Records made before the rename hold the train-vs-held-out FID as ``rfid_floor_train_vs_heldout`` (and the
    dict as ``floor``): read, carded with that value, and written back unchanged; one with neither name is refused."""
    s = stage("vqgan")
    old = json.loads(s.record_path("cpu").read_text())
    old["metrics"]["rfid_floor_train_vs_heldout"] = 61.5
    old["metrics"]["floor"] = {"fid_train_vs_heldout": 61.5}
    for new in ("fid_real_train_vs_heldout", "real_vs_real", "jpeg_reference"):
        old["metrics"].pop(new, None)
    record = s.record_type.from_json(old)
    assert record.to_json() == old and record.renamed("fid_real_train_vs_heldout") == 61.5
    assert "**61.5**" in s.card(record, "4ch", "vqgan-4ch-cpu")
    del old["metrics"]["rfid_floor_train_vs_heldout"]
    with pytest.raises(ValueError, match="metrics lack 'fid_real_train_vs_heldout' \\(called "
                                         "'rfid_floor_train_vs_heldout' in older records\\), which a VQGANRecord needs"):
        s.record_type.from_json(old)


def test_the_vqgan_and_ldm_cards_state_scores_beside_floors_and_use():
    vq = {"profile": "cpu", "git_commit": "abc", "metrics": {
        "image_size": 32, "downsample": 2, "n_train_crops": 8192, "hardware": "CPU (2 cores)", "n_eval": 500,
        "train_seconds": {"4": 1620.0}, "train_steps": 2000, "fid_real_train_vs_heldout": 60.0,
        "jpeg_reference": {"quality": 75, "chroma_subsampling": "4:2:0", "psnr": 29.4, "ssim": 0.91, "rfid": 12.0},
        "by_model": [{"model": "VQ-GAN, 4 channels", "psnr": 25.0, "ssim": 0.8, "rfid": 55.0, "codebook_usage": 0.93,
                      "perplexity": 200.0},
                     {"model": "mean colour per tile", "psnr": 15.0, "ssim": 0.1, "rfid": 300.0, "codebook_usage": None,
                      "perplexity": None},
                     {"model": "JPEG quality 75, 4:2:0 (reference)", "psnr": 29.4, "ssim": 0.91, "rfid": 12.0,
                      "codebook_usage": None, "perplexity": None}]}}
    card = stage("vqgan").card(typed("vqgan", vq), "4ch", "vqgan-4ch-cpu")
    for needed in ("not for diagnosis", "n = 500", "**60.0**", "| VQ-GAN, 4 channels | 25.00 | 0.800 | 55.0 | 0.93 |",
                   "| mean colour per tile | 15.00 | 0.100 | 300.0 |  |  |", "27 min of training", "VQModel.from_pretrained",
                   "Licence", "| JPEG quality 75, 4:2:0 (reference) | 29.40 | 0.910 | 12.0 |", "not a floor",
                   "saved as JPEG and decoded"):
        assert needed in card, needed
    assert "Floor" not in card
    ldm = {"profile": "cpu", "git_commit": "abc", "metrics": {
        "classes": ["stroma", "tumour"], "hardware": "CPU (2 cores)", "train_seconds": 1800.0, "guidance_scale": 2.0,
        "sampler": "dpm", "sampler_steps": 20, "per_cluster": {"stroma": {"n": 40, "fid": 90.0}},
        "floor_per_cluster": {"stroma": {"n": 40, "fid": 70.0}}, "controllability_chance": 0.5,
        "controllability_ceiling": 0.9,
        "controllability": [{"set": "real held-out tiles (ceiling)", "n": 80, "accuracy": 0.9, "ci_low": 0.82,
                             "ci_high": 0.96}, {"set": "2.0", "n": 80, "accuracy": 0.75, "ci_low": 0.65, "ci_high": 0.84}],
        "goals": [{"goal": "controllability by the independent judge over its real ceiling", "target": ">= 0.8",
                   "measured": 0.6 / 0.8, "met": False}]}}
    before_the_judge = {**ldm, "metrics": {**ldm["metrics"], "judge": None, "judged_controllability": None}}
    old_card = stage("ldm").card(typed("ldm", before_the_judge), "", "ldm-cpu")
    assert "independent judge: not recorded by this run" in old_card  # a record made before the judge existed
    ldm["metrics"].update(judge={"features": "inception"}, judged_ceiling=0.8, judged_chance=0.5,
                          judged_chance_majority=0.55, judged_controllability=[
                              {"set": "real held-out tiles (ceiling)", "n": 80, "accuracy": 0.8, "ci_low": 0.7,
                               "ci_high": 0.88, "of_ceiling": 1.0, "over_chance": 1.0},
                              {"set": "2.0", "n": 80, "accuracy": 0.6, "ci_low": 0.5, "ci_high": 0.7, "of_ceiling": 0.75,
                               "over_chance": 0.2}])
    card = stage("ldm").card(typed("ldm", ldm), "", "ldm-cpu")
    for needed in ("not for diagnosis", "| stroma | 40 | 90.0 | 70.0 |", "| 2.0 | 80 | 0.75 (0.65-0.84) |",
                   "own space (near-circular)", "chance is\n0.50", "ceiling (real held-out tiles) is 0.90", "subfolder",
                   "30 min of training", "logistic regression on inception features",
                   "| 2.0 | 80 | 0.60 (0.50-0.70) | 0.75 | 0.20 |", "on real held-out tiles, 0.80); chance is 0.50 (1/k) or\n0.55",
                   "| controllability by the independent judge over its real ceiling | >= 0.8 | 0.750 | no |",
                   "DPMSolverMultistepScheduler.from_pretrained"):
        assert needed in card, needed
    assert "more surely than real held-out tiles" not in card and "DDIMScheduler" not in card
    # samples the judge files better than real tiles, the interval above the ceiling: a record made under the one-sided
    # goal says met; the card shows it failed, and says why in its limits
    ldm["metrics"]["judged_controllability"][1].update(accuracy=0.9, of_ceiling=1.12, of_ceiling_low=1.05,
                                                      of_ceiling_high=1.18, over_chance=1.2)
    ldm["metrics"]["goals"][0].update(measured=1.12, met=True)
    exaggerated = stage("ldm").card(typed("ldm", ldm), "", "ldm-cpu")
    assert "1.12x its ceiling, 95 % interval 1.05-1.18 (and its margin over chance, 1.20 of the ceiling's)" in exaggerated
    assert "| >= 0.8 | 1.120 | no: above real (met as recorded, one-sided; see Limits) |" in exaggerated
    # a record made under the two-sided goal carries its own verdict
    ldm["metrics"]["goals"][0].update(target=">= 0.8, interval not wholly above 1", met=False)
    assert "| 1.120 | no |" in stage("ldm").card(typed("ldm", ldm), "", "ldm-cpu")


def test_notebook_09_uses_the_released_generators_of_a_released_profile(isolated_dirs):
    from histolab_utils.data.releases import pretrained, read_manifest
    from histolab_utils.paths import runs_dir


    from histolab_utils.stages.base import EarlierSplitError
    from histolab_utils.stages.segmenter import generator_stages

    stages = generator_stages()
    assert set(stages) == {"masks", "spade", "joint"}
    for key, name in (("masks", "masks-cpu"), ("spade", "spade-pixel-cpu"), ("joint", "joint-cpu")):
        local = runs_dir("cpu") / {"spade": "spade-pixel"}.get(key, key) / "pipeline"
        if name in read_manifest() and stages[key].release_split_error("cpu") is not None:
            # released on an earlier split, and no run of this machine: refused, with the command that retrains it
            with pytest.raises(EarlierSplitError, match=f"{name} was trained on split"):
                stages[key].model_or_release("cpu", stages[key].generator_variant)
            continue
        expected = pretrained(name) if name in read_manifest() else local
        assert stages[key].model_or_release("cpu", stages[key].generator_variant) == expected, key
    assert stages["masks"].model_or_release("cpu") == pretrained("masks-cpu")  # the slide's strips did not move
    from histolab_utils.stages.segmenter import generator_folders

    assert generator_folders("smoke")["masks"] == runs_dir("smoke") / "masks" / "pipeline"  # never released


def test_cards_state_the_split_failed_goals_limits_hardware_in_words_and_a_dirty_commit():
    goals = [{"goal": "FID over the real-vs-real floor", "target": "<= 1.5", "measured": 1.8, "met": False},
             {"goal": "recall", "target": ">= 0.5", "measured": 0.8, "met": True}]
    published = stage("spade").read_record("cpu")
    spade = {"profile": "cpu", "git_commit": "abc123-dirty", "split_version": 2,
             "hardware": {"machine": "x86_64", "cpu_count": 2, "gpu": None,
                          "cpu": "AMD EPYC, 2 cores, AVX-512 BF16 (native bf16)"},
             "metrics": {"goals": goals, "nasdm_pixel_real_masks": {**published.nasdm_pixel_real_masks, "dice": 0.9},
                         "fidelity_reference_real_pairs": {"dice": 0.55, "n": 500}}}
    pixel = stage("spade").card(typed("spade", spade), "pixel", "spade-pixel-cpu")
    latent = stage("spade").card(typed("spade", spade), "latent", "spade-latent-cpu")
    limits = pixel[pixel.index("## Limits"):pixel.index("## Licence")]
    assert "Made on split 2" in limits and "cannot be scored on split 3" in limits and "ONLY=07" in limits
    assert "Failed goal: FID over the real-vs-real floor" in limits and "Failed goal: recall" not in limits
    assert "past real, a higher Dice is no better" in limits, "a fidelity above real pairs' is named as a limit, not a strength"
    assert "`abc123-dirty` had uncommitted changes" in limits
    assert "AMD EPYC, 2 cores, AVX-512 BF16 (native bf16), no GPU" in pixel
    assert "few small images" not in pixel and "two H&E images of one tissue" in pixel
    assert "`hgsc_png`" in pixel and "tiatoolbox" not in pixel.split("## Licence")[1]
    # the latent model's card: a record made before each model chose for itself says its guidance was the pixel
    # model's; the split-3 record chose the latent model's guidance and sampler on validation
    own_choice = typed("spade", spade).has_own_choice("latent")
    assert ("neither was tuned for this model" in latent) is not own_choice, latent
    assert "tiatoolbox" in latent.split("## Licence")[1] and "Failed goal" not in latent
    older = {"profile": "cpu", "git_commit": "abc123", "split_version": 3,
             "hardware": {"machine": "x86_64", "cpu_count": 2, "gpu": None}, "metrics": {"goals": goals}}
    card = stage("spade").card(typed("spade", older), "pixel", "spade-pixel-cpu")
    assert "Made on split 3" in card and "cannot be scored" not in card and "uncommitted" not in card
    assert "2-core x86_64 CPU (its model and bf16 kind were not recorded)" in card


def test_the_mask_generators_card_knows_its_slide_kept_its_split():
    masks = {"profile": "cpu", "git_commit": "abc", "split_version": 2}
    card = stage("masks").card(typed("masks", {**masks, "metrics": {}}), "", "masks-cpu")
    assert "Made on split 2" in card and "cannot be scored" not in card
    assert "one whole HGSC slide" in card and "few small images" not in card


def test_cards_are_rewritten_from_their_records_without_touching_the_weights(isolated_dirs, tmp_path):
    from histolab_utils.data.releases import read_manifest, rewrite_card
    from histolab_utils.data.store import DataError

    with pytest.raises(DataError, match="no release 'nothing-cpu'"):
        rewrite_card("nothing-cpu", "# card", root=tmp_path)
    folder = tmp_path / "pretrained" / "toy-cpu"
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"w" * 10)
    (folder / "README.md").write_text("old")
    (tmp_path / "pretrained" / "manifest.json").write_text(json.dumps({"toy-cpu": {
        "files": {"README.md": "0", "weights.bin": "1"}, "bytes": 13}}))
    rewrite_card("toy-cpu", "# the new card\n", root=tmp_path)
    entry = read_manifest(tmp_path)["toy-cpu"]
    assert (folder / "README.md").read_text() == "# the new card\n" and entry["files"]["weights.bin"] == "1"
    assert entry["files"]["README.md"] != "0" and entry["bytes"] == 10 + len("# the new card\n")


def test_results_refuse_a_dirty_checkout_unless_told(monkeypatch, capsys):
    monkeypatch.setattr(results, "git_commit", lambda: "abc-dirty")
    with pytest.raises(SystemExit):
        results.main(["--profile", "cpu", "--only", "03"])
    assert "uncommitted changes" in capsys.readouterr().err


def test_a_cards_training_recipe_line_says_what_the_recipe_is():
    from types import SimpleNamespace

    from histolab_utils.stages.cards import training_recipe

    line = training_recipe(SimpleNamespace(training_recipe="plain_loop"))
    assert line.startswith("Training recipe: `plain_loop`") and "constant learning rate after warm-up" in line
    assert "predates recipe names" in training_recipe(SimpleNamespace(training_recipe=None))
