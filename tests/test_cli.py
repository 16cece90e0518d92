"""``jaxconv train`` / ``jaxconv eval``: a short real run with LeNet-5 on digits, config files,
and every bad input it must reject (clear message, exit code 2, nothing lost)."""

import json
import pickle

import numpy as np
import pytest

from jaxconv.cli import main
from jaxconv.train.cli import parse_config

FAST = ["--epochs", "1", "--max-steps", "3", "--no-progress", "--no-plots", "--num-devices", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One short LeNet-5 run on digits through the CLI, shared by the eval tests."""
  wd = tmp_path_factory.mktemp("cli") / "run"
  rc = main(["train", *FAST, "--workdir", str(wd)])
  assert rc == 0
  return wd


def test_train_cli_runs_lenet5_on_digits(trained, capsys):
  summary = json.loads((trained / "summary.json").read_text())
  assert summary["model"] == "lenet5" and summary["dataset"] == "digits" and summary["steps"] == 3
  assert 0.0 <= summary["test_top1"] <= 1.0
  cfg = json.loads((trained / "config.json").read_text())
  assert cfg["max_steps"] == 3 and cfg["optimizer"] == "adamw"


def test_eval_cli_prints_accuracy_and_confusion(trained, capsys):
  assert main(["eval", "--workdir", str(trained), "--no-plot"]) == 0
  out = capsys.readouterr().out
  assert "step 3: test accuracy" in out and "true \\ predicted" in out
  r = json.loads((trained / "eval-3.json").read_text())
  cm = np.array(r["confusion"])
  assert cm.shape == (10, 10) and cm.sum() == 359  # every test example counted once
  assert r["top1"] == pytest.approx(np.trace(cm) / 359)
  summary = json.loads((trained / "summary.json").read_text())
  assert r["top1"] == pytest.approx(summary["test_top1"], abs=1e-6)


def test_eval_cli_errors(tmp_path, trained, capsys):
  assert main(["eval", "--workdir", str(tmp_path / "nowhere")]) == 2
  assert "no checkpoint directory at" in capsys.readouterr().err
  assert main(["eval", "--workdir", str(trained), "--step", "7"]) == 2
  assert "step=7 is not among the checkpoints [3]" in capsys.readouterr().err


def test_config_file_yaml_and_json_with_cli_override(tmp_path):
  (tmp_path / "run.yaml").write_text("epochs: 7\noptimizer: nesterov\nlr: 0.05\nlr_decay_epochs: [3, 5]\n")
  cfg = parse_config(["--config", str(tmp_path / "run.yaml"), "--lr", "0.2", "--flip", "true"])
  assert (cfg.epochs, cfg.optimizer, cfg.lr, cfg.lr_decay_epochs, cfg.flip) == (7, "nesterov", 0.2, (3, 5), True)
  (tmp_path / "run.json").write_text(json.dumps({"schedule": "onecycle", "model_kwargs": {"input_size": 28}}))
  cfg = parse_config(["--config", str(tmp_path / "run.json"), "-b", "32"])
  assert (cfg.schedule, cfg.model_kwargs, cfg.batch_size) == ("onecycle", {"input_size": 28}, 32)


def run_err(capsys, *argv):
  rc = main(["train", *FAST, *argv])
  return rc, capsys.readouterr().err


@pytest.mark.parametrize("argv,match", [
    (["--model", "lenet6"], "unknown model 'lenet6'; choose one of alexnet, "),
    (["--dataset", "mnits"], "unknown dataset 'mnits'; choose one of digits, mnist, fashion_mnist"),
    (["--optimizer", "lamb"], "unknown optimizer 'lamb'; choose one of sgd, momentum, nesterov, adam, adamw"),
    (["--schedule", "linear"], "unknown schedule 'linear'; choose one of constant, step, exponential, "
                               "warmup_cosine, onecycle, plateau"),
    (["--precision", "fp16"], "unknown precision 'fp16'; choose one of float32, bfloat16, float16"),
    (["--num-devices", "8", "--batch-size", "36"], "batch_size=36 is not divisible by the number of devices (8)"),
])
def test_train_cli_bad_names(capsys, tmp_path, argv, match):
  rc, err = run_err(capsys, "--workdir", str(tmp_path / "w"), *argv)
  assert rc == 2 and match in err, err


def test_example_configs_load_and_run(capsys, tmp_path):
  from pathlib import Path
  configs = sorted((Path(__file__).resolve().parents[1] / "examples" / "configs").glob("*.yaml"))
  assert [c.name for c in configs] == ["lenet5-mnist.yaml", "resnet18-cifar10.yaml", "small_cnn-mnist.yaml"]
  for c in configs:
    cfg = parse_config(["--config", str(c)])
    assert cfg.dataset in ("mnist", "cifar10") and cfg.epochs >= 20
  # Runnable as given (here on the bundled digits, two steps).
  assert main(["train", "--config", str(configs[0]), "--dataset", "digits", "--max-steps", "2", "--no-progress",
               "--no-plots", "--workdir", str(tmp_path / "w")]) == 0


def test_train_cli_validates_before_creating_the_run_directory(capsys, tmp_path):
  rc, err = run_err(capsys, "--model-kwargs", '{"bogus": 1}', "--workdir", str(tmp_path / "w"))
  assert rc == 2 and "model 'lenet5' has no option(s) ['bogus']" in err
  assert not (tmp_path / "w").exists()


def test_train_help_is_plain_text(capsys):
  with pytest.raises(SystemExit):
    main(["train", "--help"])
  out = capsys.readouterr().out
  assert "``" not in out and "OPTIMIZERS" not in out
  assert "sgd, momentum, nesterov, adam or adamw" in " ".join(out.split())


def test_train_cli_data_dir_without_files(capsys, tmp_path):
  (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
  rc, err = run_err(capsys, "--dataset", "mnist", "--data-dir", str(tmp_path), "--workdir", str(tmp_path / "w"))
  assert rc == 2
  assert "lacks the mnist files ['train-labels-idx1-ubyte[.gz]', 't10k-images-idx3-ubyte[.gz]', " \
         "'t10k-labels-idx1-ubyte[.gz]']" in err


def test_train_cli_corrupt_and_truncated_files(capsys, tmp_path):
  d = tmp_path / "cifar-10-batches-py"
  d.mkdir()
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    (d / name).write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}))
  (d / "data_batch_3").write_bytes((d / "data_batch_3").read_bytes()[:100])
  rc, err = run_err(capsys, "--dataset", "cifar10", "--data-dir", str(tmp_path), "--workdir", str(tmp_path / "w"))
  assert rc == 2 and "data_batch_3: cannot unpickle" in err and "corrupt or truncated" in err


def test_train_cli_resume_with_incompatible_config(capsys, trained):
  rc, err = run_err(capsys, "--workdir", str(trained), "--resume", "--optimizer", "sgd")
  assert rc == 2 and "cannot resume: the config differs from the checkpoint's in optimizer: " \
                     "checkpoint 'adamw' vs now 'sgd'" in err
  rc, err = run_err(capsys, "--workdir", str(trained))
  assert rc == 2 and "already holds checkpoints (latest step 3)" in err


def test_train_cli_config_file_errors(capsys, tmp_path):
  (tmp_path / "bad.yaml").write_text("epochs: [1\n")
  rc, err = run_err(capsys, "--config", str(tmp_path / "bad.yaml"))
  assert rc == 2 and "bad.yaml' cannot be parsed" in err
  (tmp_path / "keys.json").write_text('{"epoch": 3}')
  rc, err = run_err(capsys, "--config", str(tmp_path / "keys.json"))
  assert rc == 2 and "unknown config keys ['epoch']; valid keys: batch_size" in err
  rc, err = run_err(capsys, "--config", str(tmp_path / "missing.yaml"))
  assert rc == 2 and "missing.yaml' does not exist" in err
