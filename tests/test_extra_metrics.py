"""Reward-extra-info metrics (reward.extra_metrics, reward.confprofile_metrics), values worked by hand.

The verl-facing hook is tested against the real trainers' functions in test_verl_metrics_hook.py;
here the reductions alone, and the equality of the validation P/R/F1 with ``confprofile eval``.
"""

import json

import pytest

from verl_confprofile.cli import main
from verl_confprofile.profile_format import parse_profile
from verl_confprofile.reward import confprofile_metrics  # noqa: F401  (registers the confprofile family)
from verl_confprofile.reward.extra_metrics import (
    MetricFamily,
    _FAMILIES,
    as_floats,
    register_family,
    step_metrics,
    validation_metrics,
)
from verl_confprofile.reward.group import Group
from verl_confprofile.reward.options import read_options
from verl_confprofile.reward.rows import score_row
from verl_confprofile.taxonomy import Taxonomy
from verl_confprofile.voting import vote_profile

# ---------------------------------------------------------------- generic keys


def test_numeric_keys_become_means_and_others_are_skipped():
    columns = {
        "acc": [1, 0, 1, None],  # None: a rollout without the key (verl's v1 fills gaps so)
        "len_bonus": [0.5, 0.25, 0.0, 0.25],
        "pred": ["a", "b", "c", "d"],
        "nested": [{"x": 1}] * 4,
        "flag": [True, False, False, False],
    }
    assert step_metrics(columns) == {
        "reward_extra/acc/mean": pytest.approx(2 / 3),  # (1 + 0 + 1) / 3
        "reward_extra/len_bonus/mean": pytest.approx(0.25),  # 1.0 / 4
        "reward_extra/flag/mean": pytest.approx(0.25),
    }


def test_as_floats():
    assert as_floats(["x", "y"]) is None
    assert as_floats([1, "x"]) is None
    assert list(as_floats([1, 2.5])) == [1.0, 2.5]


@pytest.fixture
def ratio_family():
    """A manager declaring a ratio metric: sum(hit) / sum(tried), which a mean of rows is not."""

    def step(cols):
        return {"toy/hit_rate": cols["hit"].sum() / cols["tried"].sum()}

    family = register_family(MetricFamily("toy", lambda keys: [k for k in keys if k in ("hit", "tried")], step))
    yield family
    del _FAMILIES["toy"]


def test_a_family_reduces_the_keys_it_claims_and_the_rest_stay_generic(ratio_family):
    # hit/tried per rollout: 1/1, 0/1, 0/0, 1/2 -> 2 / 4 = 0.5 (a mean of per-row ratios would be 1/2 too
    # but undefined for the 0/0 row); "acc" is not the family's: generic mean (1 + 0 + 0 + 1) / 4
    columns = {"hit": [1, 0, 0, 1], "tried": [1, 1, 0, 2], "acc": [1, 0, 0, 1]}
    assert step_metrics(columns) == {"toy/hit_rate": 0.5, "reward_extra/acc/mean": 0.5}


# ---------------------------------------------------------------- the confprofile family, by hand
#
# One group of 4 rollouts over gender and age.
#   gender: well_formed 1 1 1 0, agree 1 0 1 0, weight 1.0 0.6 0.2 0, na 0 1 0 0, ref_missing 0 0 1 0,
#           margin 2, share 0.5, labelled 1 and label_match 1 for all
#   age:    well_formed 1 1 0 0, agree 1 1 0 0, weight 0.4 0.4 0 0, na 0, ref_missing 0,
#           margin 3, share 0.25, not labelled
GENDER = {
    "well_formed": [1, 1, 1, 0], "agree": [1, 0, 1, 0], "weight": [1.0, 0.6, 0.2, 0.0], "na": [0, 1, 0, 0],
    "ref_missing": [0, 0, 1, 0], "margin": [2] * 4, "share": [0.5] * 4, "labelled": [1] * 4,
    "label_match": [1] * 4, "gold": [1] * 4, "answered": [1] * 4, "correct": [1] * 4,
}  # fmt: skip
AGE = {
    "well_formed": [1, 1, 0, 0], "agree": [1, 1, 0, 0], "weight": [0.4, 0.4, 0.0, 0.0], "na": [0] * 4,
    "ref_missing": [0] * 4, "margin": [3] * 4, "share": [0.25] * 4, "labelled": [0] * 4,
    "label_match": [0] * 4, "gold": [0] * 4, "answered": [1] * 4, "correct": [0] * 4,
}  # fmt: skip


def step_columns():
    cols = {f"{dim}/{k}": v for dim, fields in (("gender", GENDER), ("age", AGE)) for k, v in fields.items()}
    group = {"group_members": [4] * 4, "group_partial": [0] * 4, "group_timeout": [0] * 4, "group_overflow": [0] * 4}
    return {**cols, **group, "group_unreachable": [0] * 4}


def test_confprofile_step_metrics_by_hand():
    got = step_metrics(step_columns())
    want = {
        # gender: 3 of 4 well-formed; of those 2 agree, 1 NA, weights (1.0+0.6+0.2)/3, 1 ref missing
        "confprofile/gender/well_formed": 3 / 4,
        "confprofile/gender/agree": 2 / 3,
        "confprofile/gender/na": 1 / 3,
        "confprofile/gender/weight": 0.6,
        "confprofile/gender/ref_missing": 1 / 3,
        "confprofile/gender/margin": 2.0,
        "confprofile/gender/share": 0.5,
        "confprofile/gender/label_accuracy": 1.0,  # 4 label matches / 4 labelled
        # age: 2 of 4 well-formed, both agree, weights 0.4; no gold label -> no label_accuracy key
        "confprofile/age/well_formed": 2 / 4,
        "confprofile/age/agree": 1.0,
        "confprofile/age/na": 0.0,
        "confprofile/age/weight": 0.4,
        "confprofile/age/ref_missing": 0.0,
        "confprofile/age/margin": 3.0,
        "confprofile/age/share": 0.25,
        # overall, pooled over the 8 (rollout, dimension) pairs: 5 well-formed, 4 agree, 1 NA,
        # weights 2.6 / 5, 1 ref missing; margins (4*2 + 4*3) / 8, shares (4*0.5 + 4*0.25) / 8
        "confprofile/overall/well_formed": 5 / 8,
        "confprofile/overall/agree": 4 / 5,
        "confprofile/overall/na": 1 / 5,
        "confprofile/overall/weight": 2.6 / 5,
        "confprofile/overall/ref_missing": 1 / 5,
        "confprofile/overall/margin": 2.5,
        "confprofile/overall/share": 0.375,
        "confprofile/overall/label_accuracy": 1.0,
        "confprofile/group/members": 4.0,
        "confprofile/group/partial": 0.0,
        "confprofile/group/timeout": 0.0,
        "confprofile/group/overflow": 0.0,
        "confprofile/group/unreachable": 0.0,
    }
    assert got == pytest.approx(want)
    assert set(got) == set(want)  # every key claimed: nothing of confprofile's under reward_extra/


def test_partial_groups_are_reported_by_cause():
    # Rollouts 1-3 were voted partial: 1 and 2 in a group that timed out with 2 of 4 members,
    # 3 in a group combined early to relieve a worker (3 of 4); rollout 4 was scored alone when
    # the board was unreachable; rollouts 5-8 in a complete group of 4.
    # Shares of the 8 rollouts: partial 4/8, timeout 2/8, overflow 1/8, unreachable 1/8;
    # members (2+2+3+1+4*4)/8 = 24/8.
    cols = {f"{d}/{k}": [0] * 8 for d in ("gender", "age") for k in GENDER}
    cols.update(
        group_members=[2, 2, 3, 1, 4, 4, 4, 4],
        group_partial=[1, 1, 1, 1, 0, 0, 0, 0],
        group_timeout=[1, 1, 0, 0, 0, 0, 0, 0],
        group_overflow=[0, 0, 1, 0, 0, 0, 0, 0],
        group_unreachable=[0, 0, 0, 1, 0, 0, 0, 0],
    )
    got = step_metrics(cols)
    assert {k: v for k, v in got.items() if k.startswith("confprofile/group/")} == pytest.approx(
        {
            "confprofile/group/members": 3.0,
            "confprofile/group/partial": 0.5,
            "confprofile/group/timeout": 0.25,
            "confprofile/group/overflow": 0.125,
            "confprofile/group/unreachable": 0.125,
        }
    )


@pytest.mark.parametrize("key", ["group_partial", "group_unreachable"])
def test_a_key_set_that_is_not_complete_is_left_to_the_generic_means(key):
    cols = step_columns()
    del cols[key]
    got = step_metrics(cols)
    assert not any(k.startswith("confprofile/") for k in got)
    assert got["reward_extra/gender/well_formed/mean"] == 0.75


# ---------------------------------------------------------------- validation, by hand
#
# Three prompts, two rollouts each (members of a group share its prediction flags):
#   u1: gender gold, answered, correct;  age gold, not answered (NA)
#   u2: gender gold, answered, wrong;    age no gold label
#   u3: gender no gold (answered);       age gold, answered, correct
# gender: support 2, answers 2, correct 1 -> P 1/2, R 2/2, F1 2(1/2)(1)/(3/2) = 2/3
# age:    support 2, answers 1, correct 1 -> P 1,   R 1/2, F1 2/3
# averages: P 3/4, R 3/4, mean F1 2/3, F1 of means 3/4


def validation_columns():
    per_prompt = {
        "u1": {"gender": (1, 1, 1), "age": (1, 0, 0)},
        "u2": {"gender": (1, 1, 0), "age": (0, 1, 0)},
        "u3": {"gender": (0, 1, 0), "age": (1, 1, 1)},
    }
    uids = [u for u in per_prompt for _ in range(2)]
    cols = {k: list(v) for k, v in step_columns().items()}
    cols = {k: (v + v)[: len(uids)] for k, v in cols.items()}  # 6 rows of well-formed etc. (unused here)
    for dim in ("gender", "age"):
        for i, name in enumerate(("gold", "answered", "correct")):
            cols[f"{dim}/{name}"] = [per_prompt[u][dim][i] for u in uids]
    cols["reward"] = [0.0] * len(uids)  # verl adds the score itself to the validation columns
    return uids, cols


def test_confprofile_validation_by_hand():
    uids, cols = validation_columns()
    got = validation_metrics(["profiles"] * len(uids), uids, cols)
    assert got == pytest.approx(
        {
            "val-aux/profiles/gender/precision": 1 / 2,
            "val-aux/profiles/gender/recall": 1.0,
            "val-aux/profiles/gender/f1": 2 / 3,
            "val-aux/profiles/age/precision": 1.0,
            "val-aux/profiles/age/recall": 1 / 2,
            "val-aux/profiles/age/f1": 2 / 3,
            "val-core/profiles/average/precision": 3 / 4,
            "val-core/profiles/average/recall": 3 / 4,
            "val-core/profiles/average/f1_mean": 2 / 3,
            "val-core/profiles/average/f1_of_means": 3 / 4,
        }
    )


def test_validation_is_per_data_source_and_skips_dimensions_without_gold():
    uids, cols = validation_columns()
    sources = ["a", "a", "a", "a", "b", "b"]  # u3 alone in b: gender has no gold there
    got = validation_metrics(sources, uids, cols)
    assert "val-aux/b/gender/f1" not in got
    assert got["val-aux/b/age/precision"] == 1.0 and got["val-core/b/average/f1_mean"] == 1.0
    # a: gender support 2 (u1, u2) as above; age support 1 (u1), no answer -> P 0, R 0, F1 0
    assert got["val-aux/a/gender/f1"] == pytest.approx(2 / 3)
    assert got["val-aux/a/age/recall"] == 0.0


# ---------------------------------------------------------------- validation equals confprofile eval


def sample(gender, age):
    g = f"<gender><evidence>e</evidence><tag>{gender[0]}</tag><score>{gender[1]}</score></gender>" if gender else ""
    a = f"<age><evidence>e</evidence><tag>{age[0]}</tag><score>{age[1]}</score></age>" if age else "<age>broken"
    return f"<think>hm</think>{g}{a}"


# user -> (gold labels, validation generations); val_kwargs.n = 3
USERS = {
    "u1": ({"gender": "Male", "age": "old"}, [sample(("Male", 4), ("old", 2)), sample(("Female", 5), ("young", 1)), sample(("Male", 2), None)]),
    "u2": ({"gender": "Female", "age": "NA"}, [sample(("NA", 5), ("young", 3)), sample(("Female", 2), ("young", 3)), sample(None, ("old", 1))]),
    "u3": ({"gender": "Male"}, [sample(("Female", 3), ("NA", 5)), sample(("Female", 1), ("NA", 4)), sample(("Male", 5), ("old", 1))]),
    "u4": ({"age": "young"}, [sample(None, None), sample(None, None), sample(None, None)]),
}  # fmt: skip


def test_validation_metrics_equal_confprofile_eval(tmp_path, taxonomy_file):
    """Score the generations as the reward managers do (group vote per prompt, rows.score_row),
    reduce the extra info as the validation hook does, and compare with `confprofile eval` run
    on the same generations and labels (which votes each user's samples itself)."""
    options = read_options({"taxonomy": taxonomy_file})
    tax = options.taxonomy
    sources, uids, infos = [], [], []
    for user, (labels, texts) in USERS.items():
        parsed = [parse_profile(t, tax) for t in texts]
        votes = vote_profile(parsed, tax, options.spec.voting)
        for p in parsed:
            group = Group(None, len(parsed), len(parsed), False, "complete")
            _, info = score_row(p, votes, labels, {"split": "val"}, options, group)
            sources.append("confprofile"), uids.append(user), infos.append(info)
    got = validation_metrics(sources, uids, {k: [i[k] for i in infos] for k in infos[0]})

    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps({"user_id": u, "behaviors": {"watched": ["x"]}, "labels": lab}) + "\n" for u, (lab, _) in USERS.items()))
    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        "".join(
            json.dumps({"user_id": u, "sample_idx": i, "model": "m", "text": t}) + "\n"
            for u, (_, texts) in USERS.items()
            for i, t in enumerate(texts)
        )
    )
    assert main(["eval", "--records", str(records), "--samples", str(samples), "--out", str(tmp_path / "eval"), "--taxonomy", taxonomy_file]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())["thresholds"]["1"]
    want = {f"val-core/confprofile/average/{k}": v / 100 for k, v in report.pop("average").items()}
    want.update({f"val-aux/confprofile/{d}/{k}": v / 100 for d, s in report.items() for k, v in s.items()})
    assert got == pytest.approx(want)
    # and by hand, so the comparison cannot pass on two equal mistakes:
    # gender votes: u1 Male (S 6 vs 5) right; u2 Female? S_NA 5 vs S_Female 2 -> NA (abstains);
    #   u3 Female S 4 vs Male 5 -> Male right; u4 none. support u1 u2 u3 = 3, answers 2, correct 2
    #   -> P 1, R 2/3. age: gold u1 old, u4 young (u2 NA not scored); u1 votes old 2 vs young 1 -> old
    #   right; u4 no well-formed sample -> abstains. support 2, answers 1, correct 1 -> P 1, R 1/2.
    assert got["val-aux/confprofile/gender/recall"] == pytest.approx(2 / 3)
    assert got["val-aux/confprofile/age/recall"] == pytest.approx(1 / 2)
    assert got["val-core/confprofile/average/precision"] == 1.0


def test_a_dimension_named_overall_keeps_its_own_values():
    cols = {k.replace("age/", "overall/"): v for k, v in step_columns().items()}
    got = step_metrics(cols)
    assert got["confprofile/overall/well_formed"] == 0.5  # the dimension's 2 of 4, not the pooled 5 of 8
