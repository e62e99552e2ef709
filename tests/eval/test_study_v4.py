"""Study v4 (the model-call frontier): the sampler grid spends exactly each budget, the choices follow their
rules on made-up scores, and the quick pipeline leaves every artifact (frozen choices, confirmation with
the frozen samplers only, summary, report, plot)."""
import json
import math

import pytest

from rfengine.flow import CALLS_PER_STEP
from rfengine.study import frontier
from rfengine.study.report_v4 import confirmation, tables


def test_every_setting_spends_exactly_its_budget():
    grid = frontier.settings((4, 6, 10, 40), shift_up_to=20)
    for b, rows in grid.items():
        assert rows and all(s["steps"] * CALLS_PER_STEP[s["method"]] == int(b) for s in rows)
        assert len({s["name"] for s in rows}) == len(rows)
    assert {s["shift"] for s in grid["40"]} == {1.0}                     # no shifts above shift_up_to
    assert {s["name"] for s in grid["6"]} >= {"heun-3", "heun-3_shift2", "dpmpp2m-6", "ab2-6_shift2"}
    assert not any(s["method"] == "heun" for s in frontier.settings((5,))["5"])  # odd budget: no Heun


def fake(fds: dict) -> dict:
    """(recipe, seed) -> {budget: {sampler: fd}} as `frontier.score` writes it."""
    return {k: {"by_budget": v} for k, v in fds.items()}


def test_choice_uses_each_recipes_best_sampler_and_falls_back_to_the_baseline():
    fr = fake({("base", 0): {"6": {"euler-6": 60.0, "heun-3": 30.0}, "20": {"euler-20": 20.0, "heun-10": 12.0}},
               ("base", 1): {"6": {"euler-6": 64.0, "heun-3": 28.0}, "20": {"euler-20": 19.0, "heun-10": 13.0}},
               ("fc", 0): {"6": {"euler-6": 40.0, "heun-3": 24.0}, "20": {"euler-20": 15.0, "heun-10": 14.0}},
               ("fc", 1): {"6": {"euler-6": 42.0, "heun-3": 22.0}, "20": {"euler-20": 16.0, "heun-10": 14.5}}})
    chosen = frontier.choose(fr, ["base", "fc"], "base", [0, 1], [6, 20])
    assert chosen["6"]["samplers"] == {"base": "heun-3", "fc": "heun-3"} and chosen["6"]["winner"] == "fc"
    assert chosen["6"]["rows"][0]["per_seed"] == pytest.approx([math.log(24 / 30), math.log(22 / 28)])
    # at 20 calls FC's best (heun10 14.0/14.5) loses to the baseline's best (heun10 12/13), though it wins
    # against the baseline's Euler 20: the comparison is best against best
    assert chosen["20"]["samplers"] == {"base": "heun-10", "fc": "heun-10"} and chosen["20"]["winner"] == "base"
    assert chosen["6"]["challenger"] == chosen["20"]["challenger"] == "fc"
    with pytest.raises(RuntimeError, match="fc s1"):
        frontier.choose({k: v for k, v in fr.items() if k != ("fc", 1)}, ["base", "fc"], "base", [0, 1], [6])
    grid = frontier.settings((6, 20), methods=("euler", "heun"), shifts=(1.0,))
    assert frontier.confirm_grid(chosen, "fc", grid) == {"6": [{"name": "heun-3", "method": "heun", "steps": 3,
                                                                "shift": 1.0}],
                                                         "20": [{"name": "heun-10", "method": "heun", "steps": 10,
                                                                 "shift": 1.0}]}

    sel = {"baseline": "base", "budgets": chosen}
    conf = fake({("base", 5): {"6": {"heun-3": 30.0}, "20": {"heun-10": 12.0}},
                 ("fc", 5): {"6": {"heun-3": 21.0}, "20": {"heun-10": 11.0}},
                 ("base", 6): {"6": {"heun-3": 32.0}, "20": {"heun-10": 12.5}},
                 ("fc", 6): {"6": {"heun-3": 24.0}, "20": {"heun-10": 12.0}}})
    rows = confirmation(conf, sel, [5, 6, 7], {"base": 1.0, "fc": 1.5})
    assert rows["6"]["per_seed"] == pytest.approx([math.log(21 / 30), math.log(24 / 32)])
    assert rows["6"]["confirm_seeds"] == [5, 6] and rows["6"]["complete"] is False
    assert rows["6"]["step_cost_vs_baseline"] == 1.5
    # where the baseline won, the recipe that came closest is still measured: by how much the baseline wins
    assert rows["20"]["winner"] == "base" and rows["20"]["challenger"] == "fc"
    assert rows["20"]["per_seed"] == pytest.approx([math.log(11 / 12), math.log(12 / 12.5)])
    assert "no recipe beat base" in rows["20"]["verdict"] and "fc came closest" in rows["20"]["verdict"]


def test_the_confirmation_runs_the_baseline_and_each_budgets_challenger():
    row = lambda r, m: {"recipe": r, "mean_log_ratio": m}  # noqa: E731
    budgets = {"4": {"winner": "base", "challenger": "a", "rows": [row("a", 0.1), row("b", 0.3)]},
               "6": {"winner": "b", "challenger": "b", "rows": [row("a", 0.2), row("b", -0.1)]},
               "20": {"winner": "base", "challenger": "c", "rows": [row("c", 0.05), row("a", 0.4)]}}
    assert frontier.confirm_set({"baseline": "base", "budgets": budgets}) == ["base", "b", "a", "c"]
    # a selection file without challengers (written before they were recorded) gives the same set
    old = {b: {k: v for k, v in c.items() if k != "challenger"} for b, c in budgets.items()}
    assert frontier.confirm_set({"baseline": "base", "budgets": old}) == ["base", "b", "a", "c"]
    assert [frontier.challenger(c) for c in old.values()] == ["a", "b", "c"]
    assert frontier.challenger({"winner": "base", "challenger": None, "rows": []}) is None


def test_a_recipe_the_selection_does_not_confirm_is_not_fine_tuned(tmp_path):
    from rfengine.study import v4
    row = lambda r, m: {"recipe": r, "mean_log_ratio": m}  # noqa: E731
    sel = {"baseline": "base", "budgets": {"4": {"winner": "base", "challenger": "a",
                                                 "rows": [row("a", 0.1), row("b", 0.3)]}}}
    (tmp_path / "selection.json").write_text(json.dumps(sel))
    assert v4.confirm_if_chosen(tmp_path, "b", 15) is None  # neither winner nor closest: skipped
    with pytest.raises(TypeError):  # the confirmed one goes on to its fine-tune (here: its missing arguments)
        v4.confirm_if_chosen(tmp_path, "a", 15)


def test_a_study_of_the_baseline_alone_reports_nothing_to_confirm():
    fr = fake({("base", s): {"4": {"euler-4": 50.0 + s}} for s in (0, 1, 5)})
    chosen = frontier.choose(fr, ["base"], "base", [0, 1], [4])
    assert chosen["4"]["challenger"] is None and frontier.confirm_set({"baseline": "base", "budgets": chosen}) == ["base"]
    rows = confirmation(fr, {"baseline": "base", "budgets": chosen}, [5], {"base": 1.0})
    assert rows["4"]["challenger"] is None and rows["4"]["mean_log_ratio"] is None
    protocol = {"samples": 16, "budgets": [4], "methods": ["euler"], "shifts": [1.0], "shift_up_to": 10,
                "recipes": ["base"], "select_seeds": [0, 1], "confirm_seeds": [5]}
    text = tables({"selection": {"baseline": "base", "budgets": chosen, "seeds": [0, 1]}, "protocol": protocol,
                   "by_budget": rows, "frontiers": {f"base_s{s}": v["by_budget"] for (_, s), v in fr.items()}})
    assert "| 4 | base | none | base (euler-4) |" in text


def test_quick_pipeline_leaves_every_artifact(tmp_path):
    from rfengine.study import v4
    out = tmp_path / "v4"
    argv = ["--quick", "--out", str(out), "--budgets", "2", "--confirm-seeds", "7"]
    summary = v4.run(v4.parse_args(argv))
    sel = json.loads((out / "selection.json").read_text())
    assert set(sel["budgets"]) == {"2"} and sel["confirm_recipes"] == frontier.confirm_set(sel)
    assert sel["confirm_recipes"][0] == "fm_ln" and sel["budgets"]["2"]["challenger"] in sel["confirm_recipes"]
    names = {s["name"] for s in frontier.settings([2], ["euler", "heun"], [1.0, 2.0])["2"]}
    for s in (0, 1):  # selection: every recipe on the whole grid
        for r in sel["budgets"]["2"]["samplers"]:
            assert set(json.loads((out / "finetune" / f"{r}_s{s}" / "frontier.json").read_text())["by_budget"]["2"]) == names
    for r in sel["confirm_recipes"]:  # confirmation: the frozen setting only
        got = json.loads((out / "finetune" / f"{r}_s7" / "frontier.json").read_text())["by_budget"]["2"]
        assert list(got) == [sel["budgets"]["2"]["samplers"][r]]
    row = summary["by_budget"]["2"]
    assert row["confirm_seeds"] == [7] and row["fd_baseline"]["7"] > 0
    assert summary["answer"]["2"]["train"] == "fm_ln"  # one seed has no interval: nothing is established against it
    assert (out / "frontier.png").stat().st_size > 10_000 and "Confirmation seeds [7]" in (out / "report.md").read_text()
    with pytest.raises(SystemExit, match="other settings"):
        v4.run(v4.parse_args([*argv, "--samples", "64"]))
    # the secondary check: each confirmation model scored with Euler, with the same scorer as its frontier
    with pytest.raises(SystemExit, match="other settings"):  # refused before it scores (and caches) anything
        v4.run(v4.parse_args([*argv, "--samples", "64", "--euler-check"]))
    assert not list(out.glob("finetune/*/euler.json"))
    summary = v4.run(v4.parse_args([*argv, "--euler-check"]))
    ch = sel["budgets"]["2"]["challenger"]
    x = summary["euler_check"]["2"][ch]
    assert x["confirm_seeds"] == [7] and x["complete"] and x["sampler"] == "euler-2"
    assert "fm_ln" not in summary["euler_check"]["2"]
    from rfengine.study import runs
    from rfengine.study.scoring import Scorer
    for r, fd in (("fm_ln", x["fd_baseline"]["7"]), (ch, x["fd_recipe"]["7"])):
        d = out / "finetune" / f"{r}_s7"
        assert json.loads((d / "euler.json").read_text())["by_budget"] == {"2": {"euler-2": fd}}
        scorer = Scorer(samples=16, sample_steps=[20], classifier=str(out / "digits_classifier.pt"))
        assert frontier.fd(runs.load(d / "run" / "ema.safetensors"), scorer, "euler", 2, 1.0) == pytest.approx(fd, rel=1e-6)
    assert x["per_seed"] == [pytest.approx(math.log(x["fd_recipe"]["7"] / x["fd_baseline"]["7"]))]
    assert "## Secondary check" in (out / "report.md").read_text()
    assert summary["euler_frontiers"].keys() == {"fm_ln_s7", f"{ch}_s7"}


def test_the_advice_trains_a_challenger_only_where_the_confirmation_established_it():
    from rfengine.study.report_v4 import advice, sample_options
    assert sample_options("ab2-4_shift2") == "--method ab2 --steps 4 --shift 2"
    assert sample_options("heun-3") == "--method heun --steps 3"
    assert sample_options("dpmpp2m-10_shift1.5") == "--method dpmpp2m --steps 10 --shift 1.5"
    base = {"baseline": "base", "baseline_sampler": "ab2-4_shift2", "challenger": "fc", "challenger_sampler": "heun-2",
            "confirm_seeds": [15, 16], "complete": True}
    rows = {"4": {**base, "mean_log_ratio": -0.2, "ci95": [-0.3, -0.1]},     # established: train the challenger
            "6": {**base, "mean_log_ratio": -0.1, "ci95": [-0.3, 0.1]},      # interval across 0: the baseline
            "10": {**base, "mean_log_ratio": 0.2, "ci95": [0.1, 0.3]},       # the baseline wins
            "20": {**base, "mean_log_ratio": -0.2, "ci95": [-0.3, -0.1], "complete": False},  # seeds missing
            "40": {**base, "challenger": None, "challenger_sampler": None, "mean_log_ratio": None, "ci95": None}}
    got = advice(rows)
    assert {b: (a["train"], a["pays"]) for b, a in got.items()} == {
        "4": ("fc", True), "6": ("base", False), "10": ("base", False), "20": ("base", False), "40": ("base", False)}
    assert got["4"]["sample_options"] == "--method heun --steps 2"
    assert got["6"]["sample_options"] == "--method ab2 --steps 4 --shift 2"
    assert "-18.1% [-25.9%, -9.5%]" in got["4"]["measured"] and "not complete" in got["20"]["measured"]
    assert got["40"]["measured"] == "no recipe besides base to compare"
    pending = advice({"6": {**base, "confirm_seeds": [], "complete": False, "mean_log_ratio": None, "ci95": None}})
    assert pending["6"]["measured"] == "confirmation pending" and pending["6"]["train"] == "base"


def test_the_frontier_plot_compares_recipes_on_the_same_seeds_and_draws_euler_alone():
    from rfengine.study.report_v4 import mean_frontier, panels
    fronts = {f"{r}_s{s}": {"4": {"euler-4": 40.0 * k * (s + 1), "ab2-4_shift2": 10.0 * k * (s + 1)}}
              for r, k in (("base", 1.0), ("fc", 0.5)) for s in (0, 1)}
    fronts["base_s2"] = {"4": {"euler-4": 1.0, "ab2-4_shift2": 1.0}}  # a seed the other recipe lacks so far
    summary = {"protocol": {"budgets": [4], "recipes": ["base", "fc"], "select_seeds": [0, 1, 2], "methods": ["euler"],
                            "confirm_seeds": [5]}, "selection": None, "frontiers": fronts}
    (t1, s1, r1, best, src1), (t2, s2, r2, euler, src2) = panels(summary)
    assert src1 == src2 == "frontiers"
    assert s1 == s2 == [0, 1] and r1 == ["base", "fc"] and "Euler only" in t2
    assert mean_frontier(summary, "base", s1, best) == ([4], [pytest.approx(10 * math.sqrt(2))])
    assert mean_frontier(summary, "fc", s2, euler) == ([4], [pytest.approx(20 * math.sqrt(2))])
    assert mean_frontier(summary, "fc", [0, 1, 2], best) == ([], [])  # a recipe missing a seed draws nothing


def test_the_sampler_table_shows_the_baselines_fd_with_every_sampler_and_shift():
    from rfengine.study.report_v4 import sampler_table
    fronts = {f"base_s{s}": {"4": {"euler-4_shift2": 30.0, "euler-4": 40.0 * (s + 1), "ab2-4_shift2": 10.0 * (s + 1),
                                   "ab2-4": 20.0}, "20": {"euler-20": 12.0, "ab2-20": 9.0}}
              for s in (0, 1)}
    protocol = {"budgets": [4, 20], "recipes": ["base"], "select_seeds": [0, 1, 2], "methods": ["euler", "ab2"],
                "shifts": [1.0, 2.0], "shift_up_to": 10}
    text = "\n".join(sampler_table({"protocol": protocol, "frontiers": fronts}))
    assert "selection seeds [0, 1]" in text  # the seeds it has
    assert f"| 4 | {40 * math.sqrt(2):.1f} / 30.0 | 20.0 / {10 * math.sqrt(2):.1f} |" in text
    assert "| 20 | 12.0 | 9.0 |" in text


def test_the_confirmation_table_shows_geometric_mean_fds_as_its_change_is_in_logs():
    row = {"winner": "base", "challenger": "fc", "challenger_sampler": "heun-2", "baseline": "base",
           "baseline_sampler": "ab2-4_shift2", "fd_baseline": {"15": 10.0, "16": 40.0},
           "fd_challenger": {"15": 5.0, "16": 80.0}, "mean_log_ratio": 0.0, "ci95": [-1.0, 1.0],
           "per_seed": [math.log(0.5), math.log(2.0)], "step_cost_vs_baseline": 1.5, "confirm_seeds": [15, 16],
           "complete": True}
    protocol = {"samples": 16, "budgets": [4], "methods": ["euler"], "shifts": [1.0], "shift_up_to": 10,
                "recipes": ["base", "fc"], "select_seeds": [0], "confirm_seeds": [15, 16]}
    text = tables({"selection": {"baseline": "base", "budgets": {}, "seeds": [0]}, "protocol": protocol,
                   "by_budget": {"4": row}, "frontiers": {}})
    assert "| fc (heun-2) | base (ab2-4_shift2) | 20.00 | 20.00 | +0.0%" in text  # arithmetic means: 25.00, 42.50
    assert "| 4 | base | `--method ab2 --steps 4 --shift 2` | fc (heun-2) vs base (ab2-4_shift2): +0.0%" in text
    pending = {**row, "fd_baseline": {}, "fd_challenger": {}, "mean_log_ratio": None, "ci95": None, "per_seed": None,
               "confirm_seeds": [], "complete": False}
    text = tables({"selection": {"baseline": "base", "budgets": {}, "seeds": [0]}, "protocol": protocol,
                   "by_budget": {"4": pending}, "frontiers": {}})
    assert "| base (ab2-4_shift2) |  |  | n/a |" in text and "nan" not in text  # no seed in yet: blank FDs


def test_the_plot_has_no_euler_panel_without_euler_and_no_stale_picture_without_results(tmp_path):
    from rfengine.study.report_v4 import panels, write_report
    fronts = {f"{r}_s0": {"4": {"euler-4": 40.0, "ab2-4": 20.0}} for r in ("base", "fc")}
    protocol = {"budgets": [4], "recipes": ["base", "fc"], "select_seeds": [0], "confirm_seeds": [5],
                "methods": ["euler", "ab2"], "shifts": [1.0], "shift_up_to": 10, "samples": 16}
    summary = {"protocol": protocol, "selection": None, "frontiers": fronts}
    assert len(panels(summary)) == 2
    assert len(panels({**summary, "protocol": {**protocol, "methods": ["ab2"]}})) == 1
    (tmp_path / "frontier.png").write_bytes(b"an old picture")
    write_report({**summary, "frontiers": {}}, tmp_path)  # nothing finished: no plot, the old one removed
    assert not (tmp_path / "frontier.png").exists() and (tmp_path / "report.md").is_file()


def test_a_setting_name_parses_back_to_its_sampler():
    for rows in frontier.settings().values():
        for st in rows:
            assert frontier.parse(st["name"]) == (st["method"], st["steps"], st["shift"])


def test_the_euler_check_pairs_each_confirmed_recipe_with_the_baseline_on_shared_seeds():
    from rfengine.study.report_v4 import euler_check, panels, tables
    sel = {"baseline": "base", "budgets": {"4": {"winner": "base", "challenger": "fc", "rows": [],
                                                  "samplers": {"base": "ab2-4", "fc": "ab2-4"}}}, "seeds": [0]}
    fr = {("base", 15): {"by_budget": {"4": {"euler-4": 40.0}}}, ("fc", 15): {"by_budget": {"4": {"euler-4": 20.0}}},
          ("base", 16): {"by_budget": {"4": {"euler-4": 10.0}}}, ("fc", 16): {"by_budget": {"4": {"euler-4": 8.0}}},
          ("base", 17): {"by_budget": {"4": {"euler-4": 9.0}}}}  # seed 17: the recipe not scored yet
    got = euler_check(fr, sel, [15, 16, 17])
    assert set(got["4"]) == {"fc"}  # the baseline is not compared with itself
    x = got["4"]["fc"]
    assert x["confirm_seeds"] == [15, 16] and not x["complete"]
    assert x["per_seed"] == [pytest.approx(math.log(0.5)), pytest.approx(math.log(0.8))]
    assert x["mean_log_ratio"] == pytest.approx((math.log(0.5) + math.log(0.8)) / 2)
    assert x["ci95"][0] < x["mean_log_ratio"] < x["ci95"][1]
    assert euler_check({}, sel, [15])["4"]["fc"]["mean_log_ratio"] is None  # nothing scored yet
    protocol = {"samples": 16, "budgets": [4], "methods": ["euler"], "shifts": [1.0], "shift_up_to": 10,
                "recipes": ["base", "fc"], "select_seeds": [0], "confirm_seeds": [15, 16, 17]}
    summary = {"selection": sel, "protocol": protocol, "by_budget": {}, "frontiers": {}, "euler_check": got,
               "euler_frontiers": {f"{r}_s{s}": v["by_budget"] for (r, s), v in fr.items()}}
    text = tables(summary)
    assert f"| 4 | fc | [15, 16] | {20:.2f} | {math.sqrt(160):.2f} | " in text
    assert panels(summary) == []  # no selection scores and no confirmation rows: nothing to draw
    summary["by_budget"] = {"4": {}}
    (title, seeds, recipes, _, source), = panels(summary)
    assert recipes == ["base", "fc"]
    assert seeds == [15, 16] and source == "euler_frontiers" and "secondary check" in title


def test_the_euler_check_of_a_folder_without_a_selection_is_one_error_line_and_writes_nothing(tmp_path):
    from rfengine.study import v4
    with pytest.raises(SystemExit, match="selection.json is missing"):
        v4.run(v4.parse_args(["--quick", "--out", str(tmp_path), "--euler-check"]))
    assert list(tmp_path.iterdir()) == []  # no protocol frozen for a study that has not started


def test_the_same_sampler_table_pairs_each_recipe_with_the_baseline_under_one_fixed_sampler():
    from rfengine.study import stats
    from rfengine.study.report_v4 import same_sampler_table, tables
    fronts = {}
    for s in (0, 1):  # per seed: baseline 40 / 80, recipe 20 / 80 -> paired log ratios log 0.5 and log 1
        fronts[f"base_s{s}"] = {"4": {"euler-4": 40.0 * (s + 1), "heun-2": 80.0 + s, "ab2-4": 10.0},
                                "5": {"euler-5": 30.0 + s}}
        fronts[f"fc_s{s}"] = {"4": {"euler-4": 20.0 * (s + 1) ** 2, "heun-2": 80.0 + s, "ab2-4": 1.0},
                              "5": {"euler-5": (30.0 + s) / 2}}
    protocol = {"budgets": [4, 5], "recipes": ["base", "fc"], "select_seeds": [0, 1, 2], "methods": ["euler", "heun", "ab2"],
                "shifts": [1.0], "shift_up_to": 10, "samples": 16, "confirm_seeds": [7]}
    summary = {"protocol": protocol, "frontiers": fronts, "selection": None}
    text = "\n".join(same_sampler_table(summary))
    assert "Selection seeds [0, 1]" in text  # the seeds every recipe has
    pct = lambda x: f"{100 * (math.exp(x) - 1):+.1f}%"  # noqa: E731
    m, lo, hi = stats.t_interval([math.log(0.5), math.log(1.0)])  # paired per seed (unpaired: log 0.25, log 2)
    euler, heun = [line for line in text.splitlines() if line.startswith("| fc |")]
    assert euler == f"| fc | {pct(m)} [{pct(lo)}, {pct(hi)}] | -50.0% [-50.0%, -50.0%] |"
    assert heun == "| fc | +0.0% [+0.0%, +0.0%] |"  # heun spends 2 calls a step: 4 calls only; AB2 is not read
    assert "5 calls (euler-5)" in text and "4 calls (heun-2)" in text and "ab2" not in text
    assert "| base |" not in text  # the baseline is not compared with itself
    odd = same_sampler_table({**summary, "protocol": {**protocol, "budgets": [5]}})
    assert not any("heun" in line for line in odd)  # a sampler that spends no budget exactly gets no table
    tabled = tables({**summary, "selection": {"baseline": "base", "budgets": {}, "seeds": [0, 1]}})
    assert "with the same sampler" in tabled  # the report carries it


def test_with_a_gpu_present_studies_run_one_job_at_a_time(monkeypatch):
    from types import SimpleNamespace

    from rfengine.study import driver, runs
    args = SimpleNamespace(workers=2)
    monkeypatch.setattr(runs, "on_gpu", lambda: False)
    driver.one_at_a_time_on_gpu(args)
    assert args.workers == 2  # CPU: single-thread workers side by side
    monkeypatch.setattr(runs, "on_gpu", lambda: True)
    driver.one_at_a_time_on_gpu(args)
    assert args.workers == 1  # GPU: wall-clock seconds are the measure, so one job at a time
