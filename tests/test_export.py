"""Compact export: a trained 90 %-sparse run in few bytes, loaded back to the same predictions, and refused
whole when anything in the file is wrong; ``bayessparse export`` through the real command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

from bayessparse.config import resolve
from bayessparse.errors import ConfigError
from bayessparse.workflows.export import FORMAT, export_bytes, export_run, load_export
from bayessparse.files import TEMPORARY
from bayessparse.folders import LOCK, MARKER, exclusive
from bayessparse.kernels.inference import CSRLinear
from bayessparse.predict import predict_logits
from bayessparse.sparsity.density import prunable_weights
from bayessparse.train import load_finished, measured_density, train

FAST = {"data": "digits", "model": "mlp", "method": "rigl", "epochs": 1}
HEADER_SLACK = 4096  # the safetensors JSON header: ~100 bytes per tensor plus the metadata
LOOSE = {"min_sparsity": 0.5, "min_features": 0, "min_weights": 0}  # CSR layers even where they do not pay


@pytest.fixture(scope="module")
def evaluated(finished):
    return load_finished(finished)


@pytest.fixture(scope="module")
def exported(finished, tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("export") / "model.safetensors"
    return path, export_run(finished, path)


def contents(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def test_the_file_holds_the_non_zeros_and_little_else(exported, evaluated):
    path, info = exported
    _, model = evaluated
    assert abs(measured_density(model) - 0.1) < 1e-3  # the run is 90 % sparse
    nnz, dense_bytes = 0, 0
    weights = prunable_weights(model)
    for name, tensor in model.state_dict().items():
        count = int(torch.count_nonzero(tensor))
        if name in weights and 2 * count < tensor.numel():
            nnz += count
        else:
            dense_bytes += tensor.numel() * tensor.element_size()
    size = path.stat().st_size
    assert info["bytes"] == size and info["nnz"] == nnz and info["dense_bytes"] == dense_bytes
    assert size <= 1.1 * nnz * (4 + 4) + dense_bytes + HEADER_SLACK
    assert size < 0.25 * info["state_bytes"]  # against the dense checkpoint's model state
    assert abs(export_bytes(model) - size) < 1024
    metadata, tensors = contents(path)
    assert metadata["format"] == FORMAT and metadata["format_version"] == "1"
    assert (metadata["model"], metadata["num_classes"], json.loads(metadata["input_shape"])) == ("mlp", "10", [1, 8, 8])
    assert (metadata["method"], metadata["data"], float(metadata["width"])) == ("rigl", "digits", 1.0)
    sparse = json.loads(metadata["sparse"])
    assert sparse and all(list(weights[name].shape) == shape for name, shape in sparse.items())
    for name in sparse:
        flat = weights[name].detach().reshape(-1)
        assert torch.equal(tensors[f"{name}.indices"].long(), flat.nonzero().squeeze(1))
        assert torch.equal(tensors[f"{name}.values"], flat[flat != 0])


@pytest.mark.parametrize("form, rule", [("dense", {}), ("sparse", {}), ("sparse", LOOSE)])
def test_the_loaded_network_predicts_as_the_run(exported, evaluated, form, rule):
    path, _ = exported
    run, model = evaluated
    loaded = load_export(path, form, **rule)
    assert not loaded.training
    got, labels = predict_logits(loaded, run.data.test)
    want, _ = predict_logits(model, run.data.test)
    if form == "dense":
        assert torch.equal(got, want)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert torch.equal(got.argmax(1), want.argmax(1))
    converted = [m for m in loaded.modules() if isinstance(m, CSRLinear)]
    assert len(converted) == (2 if rule else 0)  # the default rule: these layers are too small to pay


def test_loading_leaves_the_callers_random_state_alone(exported):
    state = torch.get_rng_state()
    load_export(exported[0])
    assert torch.equal(torch.get_rng_state(), state)


def test_a_snapshot_ensemble_round_trips(tmp_path):
    """cigl-pa evaluates an average of snapshot networks' predictions: exported as all its members."""
    out = tmp_path / "run"
    train(resolve({**FAST, "method": "cigl-pa", "epochs": 2}), out, progress=False)
    run, model = load_finished(out)
    path = tmp_path / "pa.safetensors"
    export_run(out, path)
    metadata, _ = contents(path)
    assert metadata["structure"] == "snapshot-ensemble" and int(metadata["members"]) == len(model.members)
    for form in ("dense", "sparse"):
        got, _ = predict_logits(load_export(path, form, **(LOOSE if form == "sparse" else {})), run.data.test)
        torch.testing.assert_close(got, predict_logits(model, run.data.test)[0], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- damaged files


def first_sparse(metadata: dict[str, str]) -> str:
    return next(iter(json.loads(metadata["sparse"])))


def _missing_bias(meta, tensors):
    del tensors["classifier.bias"]


def _wrong_shape(meta, tensors):
    tensors["classifier.bias"] = tensors["classifier.bias"][:-1].clone()


def _out_of_range(meta, tensors):
    tensors[f"{first_sparse(meta)}.indices"][-1] = 10**6


def _negative_index(meta, tensors):
    tensors[f"{first_sparse(meta)}.indices"][0] = -1


def _unordered(meta, tensors):
    indices = tensors[f"{first_sparse(meta)}.indices"]
    indices[[0, 1]] = indices[[1, 0]]


def _short_indices(meta, tensors):
    name = f"{first_sparse(meta)}.indices"
    tensors[name] = tensors[name][:-1].clone()


def _float64_values(meta, tensors):
    name = f"{first_sparse(meta)}.values"
    tensors[name] = tensors[name].double()


def _nan_value(meta, tensors):
    tensors[f"{first_sparse(meta)}.values"][0] = float("nan")


def _missing_values(meta, tensors):
    del tensors[f"{first_sparse(meta)}.values"]


def _extra_tensor(meta, tensors):
    tensors["classifier.extra"] = torch.zeros(3)


def _version(meta, tensors):
    meta["format_version"] = "2"


def _foreign_format(meta, tensors):
    meta["format"] = "someone-else"


def _no_model(meta, tensors):
    del meta["model"]


def _unknown_model(meta, tensors):
    meta["model"] = "transformer"


def _bad_shape_text(meta, tensors):
    meta["input_shape"] = "[1, 8,"


def _absurd_shape(meta, tensors):
    meta["input_shape"] = "[100000, 100000, 1000]"  # built on the meta device: refused without allocating


def _many_members(meta, tensors):
    meta["structure"], meta["members"] = "snapshot-ensemble", str(10**9)


def _unbuildable(meta, tensors):
    meta["model"], meta["input_shape"] = "cnn2d", "[40]"


def _absurd_sparse_shape(meta, tensors):  # the same, with the sparse shapes made to agree
    _absurd_shape(meta, tensors)
    meta["sparse"] = json.dumps({**json.loads(meta["sparse"]), first_sparse(meta): [256, 10**13]})


def _bad_classes(meta, tensors):
    meta["num_classes"] = "-3"


def _sparse_shape(meta, tensors):
    shapes = json.loads(meta["sparse"])
    shapes[first_sparse(meta)] = [1, 2]
    meta["sparse"] = json.dumps(shapes)


def _sparse_not_prunable(meta, tensors):
    meta["sparse"] = json.dumps({**json.loads(meta["sparse"]), "classifier.bias": [10]})


def _dense_and_sparse(meta, tensors):  # a weight stored sparse, whose metadata entry is gone
    meta["sparse"] = json.dumps({k: v for k, v in json.loads(meta["sparse"]).items() if k != first_sparse(meta)})


DAMAGE = {
    "missing_bias": (_missing_bias, "tensor 'classifier.bias' is missing"),
    "wrong_shape": (_wrong_shape, "the network expects"),
    "out_of_range": (_out_of_range, "outside"),
    "negative_index": (_negative_index, "outside"),
    "unordered": (_unordered, "strictly increasing"),
    "short_indices": (_short_indices, "int32 of the shape of its values"),
    "float64_values": (_float64_values, "float32"),
    "nan_value": (_nan_value, "NaN"),
    "missing_values": (_missing_values, ".values' is missing"),
    "extra_tensor": (_extra_tensor, "unexpected tensor 'classifier.extra'"),
    "version": (_version, "unsupported format_version '2'"),
    "foreign_format": (_foreign_format, "not a bayessparse export"),
    "no_model": (_no_model, "metadata entry 'model' is missing"),
    "unknown_model": (_unknown_model, "cannot build the network: unknown model 'transformer'"),
    "bad_shape_text": (_bad_shape_text, "input_shape"),
    "absurd_shape": (_absurd_shape, "the network has [256, 10000000000000]"),
    "absurd_sparse_shape": (_absurd_sparse_shape, "more than int32 indices address"),
    "bad_classes": (_bad_classes, "num_classes"),
    "many_members": (_many_members, "metadata members is 1000000000"),
    "unbuildable": (_unbuildable, "cannot build the network"),
    "sparse_shape": (_sparse_shape, "shape"),
    "sparse_not_prunable": (_sparse_not_prunable, "not a prunable weight"),
    "dense_and_sparse": (_dense_and_sparse, "is missing"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
@pytest.mark.parametrize("form", ["dense", "sparse"])
def test_a_damaged_file_is_one_line_naming_it(exported, tmp_path, case, form):
    damage, needle = DAMAGE[case]
    metadata, tensors = contents(exported[0])
    damage(metadata, tensors)
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(save(tensors, metadata))
    with pytest.raises(ConfigError) as info:
        load_export(path, form)
    message = str(info.value)
    assert needle in message and str(path) in message and "\n" not in message, message


@pytest.mark.parametrize("content, needle", [(None, "not found"), (b"", "not a safetensors file"),
                                             (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ", "not a safetensors")])
def test_a_missing_or_unreadable_file_is_one_line(tmp_path, content, needle):
    path = tmp_path / "model.safetensors"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=needle):
        load_export(path)


def test_an_unknown_form_is_refused(exported):
    with pytest.raises(ConfigError, match="form must be one of dense, sparse"):
        load_export(exported[0], "csr")


# ----------------------------------------------------------------------------------------------- sizes it may not trust

#: Writes an export of ``mlp`` for examples of ``INPUT`` features whose weights are all stored sparse with
#: no values (a few kB), loads it and prints what happened: the time and the growth of the peak memory.
CRAFTED = textwrap.dedent("""
    import json, resource, sys, time
    import torch
    from safetensors.torch import save
    from bayessparse.errors import ConfigError
    from bayessparse.workflows.export import FORMAT, FORMAT_VERSION, load_export
    from bayessparse.sparsity.density import prunable_weights
    import models

    path, features = sys.argv[1], int(sys.argv[2])
    with torch.device("meta"):
        skeleton = models.build("mlp", 10, (features,))
    prunable, tensors, shapes = set(prunable_weights(skeleton)), {}, {}
    for name, like in skeleton.state_dict().items():
        if name in prunable:
            tensors[name + ".values"] = torch.zeros(0)
            tensors[name + ".indices"] = torch.zeros(0, dtype=torch.int32)
            shapes[name] = list(like.shape)
        else:
            tensors[name] = torch.zeros(like.shape, dtype=like.dtype)
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": "mlp", "num_classes": "10",
                "input_shape": json.dumps([features]), "width": "1.0", "structure": "network", "members": "1",
                "method": "rigl", "data": "mnist1d", "sparse": json.dumps(shapes)}
    with open(path, "wb") as f:
        f.write(save(tensors, metadata))
    declared = sum(like.numel() for like in skeleton.state_dict().values())
    before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    try:
        load_export(path)
        outcome = "loaded"
    except ConfigError as exc:
        outcome = str(exc)
    seconds = time.perf_counter() - start
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024  # ru_maxrss is in KiB
    print(json.dumps({"declared": declared, "outcome": outcome, "seconds": seconds, "grown": grown}))
""")


@pytest.mark.parametrize("features, needle", [
    (500_000, "more than max_parameters=100000000"),  # 128 M entries
    (300_000, "more than max_expansion=10000"),  # 77 M entries, under max_parameters, from ~3 kB
])
def test_a_small_file_that_describes_a_huge_network_is_refused_before_allocating_it(tmp_path, features, needle):
    path = tmp_path / "crafted.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CRAFTED, str(path), str(features)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert path.stat().st_size < 4096 and result["declared"] > 7 * 10**7
    assert needle in result["outcome"] and str(path) in result["outcome"], result
    assert result["seconds"] < 2.0 and result["grown"] < 64 * 2**20, result


def test_the_size_limits_are_the_callers_and_a_normal_export_is_within_them(exported):
    path, _ = exported
    declared = sum(v.numel() for v in load_export(path).state_dict().values())
    _, tensors = contents(path)
    stored = sum(t.numel() for k, t in tensors.items() if not k.endswith(".indices"))
    assert declared < 10**6 and declared > 5 * stored  # a 90 %-sparse network: the file describes more than it stores
    assert isinstance(load_export(path, max_parameters=declared), torch.nn.Module)
    with pytest.raises(ConfigError, match=f"network of {declared} entries, more than max_parameters={declared - 1}"):
        load_export(path, max_parameters=declared - 1)
    for bad in (0, -1, float("nan"), "1e8", True):
        with pytest.raises(ConfigError, match="max_parameters must be a number > 0"):
            load_export(path, max_parameters=bad)
    with pytest.raises(ConfigError, match="max_expansion must be a number > 0"):
        load_export(path, max_expansion=0)


# ----------------------------------------------------------------------------------------------- the command


def bayessparse(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    return subprocess.run([sys.executable, "-m", "bayessparse.cli", *argv], capture_output=True, text=True,
                          timeout=300, env=env, **kwargs)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_command_prints_one_line_and_writes_the_file(finished, tmp_path, exported):
    out = tmp_path / "model.safetensors"
    proc = bayessparse("export", str(finished), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout.count("\n") == 1
    size = out.stat().st_size
    assert proc.stdout.startswith(f"{out}: {size} bytes, {exported[1]['nnz']} non-zero weights")
    assert f"({exported[1]['state_bytes']} bytes)" in proc.stdout
    assert out.read_bytes() == exported[0].read_bytes()  # the export is deterministic
    assert [p for p in tmp_path.iterdir() if TEMPORARY.fullmatch(p.name)] == []


def _unfinished(finished: Path, tmp_path: Path) -> Path:
    from bayessparse.files import load_torch, save_torch
    import shutil

    run = tmp_path / "unfinished"
    shutil.copytree(finished, run)
    state = load_torch(run / "checkpoint.pt")
    del state["final_model"]
    save_torch(run / "checkpoint.pt", state)
    return run


@pytest.mark.parametrize("case, needle", [
    ("missing_run", "is not a run folder"),
    ("file_run", "is not a run folder"),
    ("empty_folder", "is not a run folder"),
    ("unfinished", "has not finished"),
    ("out_is_folder", "is a folder; name a file"),
    ("out_in_missing_folder", "does not exist"),
])
def test_the_command_refuses_bad_paths_in_one_line_writing_nothing(finished, tmp_path, case, needle):
    work = tmp_path / "work"
    work.mkdir()
    run, out = finished, work / "model.safetensors"
    if case == "missing_run":
        run = work / "nothing"
    elif case == "file_run":
        run = work / "file"
        run.write_text("not a run\n")
    elif case == "empty_folder":
        run = work / "empty"
        run.mkdir()
    elif case == "unfinished":
        run = _unfinished(finished, work)
    elif case == "out_is_folder":
        out = work
    else:
        out = work / "missing" / "model.safetensors"
    before, run_before = files(work), files(finished)
    proc = bayessparse("export", str(run), "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1 and proc.stderr.startswith("bayessparse: error:")
    assert needle in proc.stderr, proc.stderr
    assert files(work) == before and files(finished) == run_before


# ----------------------------------------------------------------------------------------------- the run's own files


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def assert_refused(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1 and proc.stderr.startswith("bayessparse: error:")
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


@pytest.mark.parametrize("name", ["checkpoint.pt", "config.yaml", "metrics.json", "reliability.png", LOCK, MARKER,
                                  "eval.json"])
def test_export_refuses_to_overwrite_a_file_of_the_run_it_reads(run_copy, tmp_path, name):
    before = files(tmp_path)
    assert_refused(bayessparse("export", str(run_copy), "--out", str(run_copy / name)), "would overwrite", name)
    assert files(tmp_path) == before
    assert bayessparse("export", str(run_copy), "--out", str(tmp_path / "model.safetensors")).returncode == 0


@pytest.mark.parametrize("spelling", ["dotdot", "relative", "folder_link", "file_link"])
def test_the_run_files_are_recognised_however_the_path_is_written(run_copy, tmp_path, spelling):
    cwd = None
    if spelling == "dotdot":
        out = run_copy / ".." / run_copy.name / "checkpoint.pt"
    elif spelling == "relative":
        out, cwd = Path("checkpoint.pt"), run_copy
    elif spelling == "folder_link":
        (tmp_path / "alias").symlink_to(run_copy, target_is_directory=True)
        out = tmp_path / "alias" / "checkpoint.pt"
    else:
        out = tmp_path / "link.pt"
        out.symlink_to(run_copy / "checkpoint.pt")
    before = {str(p): p.read_bytes() for p in sorted(run_copy.rglob("*")) if p.is_file()}
    assert_refused(bayessparse("export", str(run_copy), "--out", str(out), cwd=cwd), "would overwrite checkpoint.pt")
    assert {str(p): p.read_bytes() for p in sorted(run_copy.rglob("*")) if p.is_file()} == before


def test_export_into_the_run_folder_holds_its_lock(run_copy):
    """``bayessparse export runs/fast --out runs/fast/model.safetensors`` (the README's example) works,
    as one writer of the folder: while another process writes the run, it is refused."""
    out = run_copy / "model.safetensors"
    with exclusive(run_copy, "hold"):
        before = files(run_copy)
        assert_refused(bayessparse("export", str(run_copy), "--out", str(out)), "cannot export into",
                       "another process is writing it")
        assert files(run_copy) == before
    proc = bayessparse("export", str(run_copy), "--out", str(out))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert {k: v for k, v in files(run_copy).items() if k != str(out)} == before
    assert isinstance(load_export(out), torch.nn.Module)
