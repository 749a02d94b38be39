"""No command writes over one of its inputs (``output_guard``), whatever name the output is given."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from verl_confprofile.cli import build_parser, main
from verl_confprofile.data_prep.simulated import SimulatedPopulation
from verl_confprofile.taxonomy import Taxonomy


@pytest.fixture
def files(tmp_path, monkeypatch):
    """records.jsonl and samples.jsonl (a simulated population) in the current folder tmp_path/work."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    population = SimulatedPopulation(Taxonomy.load(None), seed=0)
    users = [f"u{k}" for k in range(12)]
    (work / "records.jsonl").write_text("".join(json.dumps(population.record(u, with_labels=True)) + "\n" for u in users))
    (work / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in population.samples(users, 3)))
    return work


def _snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("out", ["samples.jsonl", "./samples.jsonl", "../work/samples.jsonl", "link.jsonl", "hard.jsonl"])
def test_vote_refuses_to_write_over_its_samples_under_any_name(files, capsys, out):
    os.symlink("samples.jsonl", "link.jsonl")
    os.link("samples.jsonl", "hard.jsonl")
    before = _snapshot(files)

    assert main(["vote", "--samples", "samples.jsonl", "--out", out]) == 2

    assert f"--out {out}: is the input --samples samples.jsonl" in capsys.readouterr().err
    assert _snapshot(files) == before


def test_synthesize_refuses_the_records_file_as_out(files, capsys):
    before = _snapshot(files)
    argv = ["synthesize", "--records", "records.jsonl", "--out", "./records.jsonl", "--backend", "simulated", "--num-samples", "1"]

    assert main(argv) == 2

    assert "--out ./records.jsonl: is the input --records records.jsonl" in capsys.readouterr().err
    assert _snapshot(files) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["build-sft", "--records", "records.jsonl", "--samples", "samples.jsonl", "--out", "."],
        ["build-rl", "--records", "records.jsonl", "--samples", "samples.jsonl", "--calibration", "sft/calibration.json", "--out", "sft"],
        ["eval", "--records", "records.jsonl", "--samples", "samples.jsonl", "--out", "../work"],
        ["vote", "--samples", "samples.jsonl", "--calibration", "sft/calibration.json", "--out", "sft/calibration.json"],
    ],
    ids=["build-sft", "build-rl", "eval", "vote"],
)
def test_an_output_folder_holding_an_input_is_refused(files, capsys, argv):
    assert main(["build-sft", "--records", "records.jsonl", "--samples", "samples.jsonl", "--out", "sft"]) == 0
    capsys.readouterr()
    before, before_sft = _snapshot(files), _snapshot(files / "sft")

    assert main(argv) == 2

    err = capsys.readouterr().err
    assert f"{argv[0]}: error: --out {argv[-1]}: " in err
    assert "holds the input" in err or "is the input" in err
    assert _snapshot(files) == before and _snapshot(files / "sft") == before_sft


@pytest.mark.parametrize("command", ["build-sft", "build-rl", "eval", "demo"])
def test_an_existing_file_as_output_folder_is_a_clear_error(files, capsys, command):
    (files / "taken").write_text("mine\n")
    argv = {
        "build-sft": ["build-sft", "--records", "records.jsonl", "--samples", "samples.jsonl"],
        "build-rl": ["build-rl", "--records", "records.jsonl", "--samples", "samples.jsonl", "--calibration", "c.json"],
        "eval": ["eval", "--records", "records.jsonl", "--samples", "samples.jsonl"],
        "demo": ["demo"],
    }[command]

    assert main([*argv, "--out", "taken"]) == 2

    err = capsys.readouterr().err
    assert "--out taken: exists and is not a folder" in err and "Errno" not in err
    assert (files / "taken").read_text() == "mine\n"


def test_a_folder_as_output_file_is_a_clear_error(files, capsys):
    (files / "somewhere").mkdir()
    assert main(["vote", "--samples", "samples.jsonl", "--out", "somewhere"]) == 2
    assert "--out somewhere: is a folder; give the path of a file" in capsys.readouterr().err


def test_every_command_declares_its_inputs_and_output():
    # A new subcommand without a declaration would skip the check silently.
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        assert command.get_default("_guard_out") is not None, name
        inputs = set(command.get_default("_guard_inputs"))
        options = {a.dest for a in command._actions}
        assert inputs <= options, name
        # every option that names an input file is declared
        assert {"records", "samples", "calibration", "taxonomy", "tokenizer"} & options <= inputs, name
