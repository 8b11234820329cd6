"""Against pythae (Chadebec et al. 2022): its VAE, VAE_LinNF (planar) and VAE_IAF beside our mean-field,
planar and IAF guides, on the same networks, data, batch size, optimizer and number of epochs.

    python benchmarks/pythae_compare.py --data-root DATA --epochs 5 --iw-samples 1000 --test-limit 1000
    python benchmarks/pythae_compare.py --data-root DATA --smoke          # seconds, nothing written

pythae is not a dependency of this project: run the script from a virtualenv that has both, e.g.
``python3 -m venv /tmp/venv_pythae && /tmp/venv_pythae/bin/pip install -e . pythae``.

Both sides train on the statically binarized MNIST (50000 training images of binarized_mnist.npz) an MLP
encoder 784-300-300 -> (mean, log-variance) of a 40-dimensional Gaussian and a decoder 40-300-300-784 with
Bernoulli outputs (ReLU), batch 100, Adam 1e-3, no KL warm-up, no gradient clipping, no early stopping,
and are scored with the weights of the last epoch. Ours is ``pyro_flowvae.compare`` on
``examples/configs/binarized_mnist_likelihood.toml``; pythae's is its own ``BaseTrainer`` loop with our
MLP as a custom ``BaseEncoder``/``BaseDecoder``. The pairs run one after the other in one process with
the same torch threads, so the throughput ratio is like for like: examples/s of the training epochs only
(our trainer's figure; for pythae the time spent in ``BaseTrainer.train_step``, so neither side's
checkpointing, validation or evaluation counts).

Test log p(x): the same ``--test-limit`` test images (spread over the test set, as ``eval.test_limit``
picks them) with ``--iw-samples`` importance samples on
both sides; ours from ``eval.iw_samples``, pythae's from its ``model.get_nll`` (which returns the mean
log p(x), a negative number, despite its name) and, as a check, from our own importance sampler over the
pythae model's modules (exact Bernoulli log-likelihood from the logits, exact planar log-determinant),
which also gives the test ELBO (the mean log weight, as ours). The flows' log-determinants are checked
against the autograd Jacobian, and the planar layers' invertibility condition w.u >= -1 is reported:
pythae does not constrain u, and a non-invertible layer makes the change-of-variables density wrong.

Not the same on the two sides, by each library's design (recorded in the JSON): pythae's planar and IAF
flows have global parameters, one flow for every x, while ours are amortized (planar: u, w, b from the
encoder's hidden state h; IAF: MADE networks that read h as context); pythae's scale is exp(log_var / 2)
and ours softplus; pythae's IAF block is the affine z * exp(s) + m and ours the gated update of Kingma et
al. (2016) Eq. (14). pythae's VAE uses the analytic Gaussian KL, so our mean-field row uses
``train.elbo=mean_field`` (TraceMeanField_ELBO) too; the flow rows use a one-sample KL on both sides.

Writes benchmarks/results/pythae_<device>.json (rows, settings, machine, versions, load averages).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pyro_flowvae.config import load_config
from pyro_flowvae.evaluation.images import spread_subset
from pyro_flowvae.runs import compare, load_run_data, machine, versions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "examples" / "configs" / "binarized_mnist_likelihood.toml"
HIDDEN = (300, 300)
LATENT = 40
BATCH = 100
LR = 1e-3
PLANAR_K = 16
IAF_K = 4
IAF_HIDDEN = (80, 80)  # our default MADE widths for latent 40: two layers of max(2 * 40, 64)
# (pythae model, our guide spec, K): the pairs, in the order they run
PAIRS = [("VAE", "mean_field", 0), ("VAE_LinNF", f"planar:{PLANAR_K}", PLANAR_K), ("VAE_IAF", f"iaf:{IAF_K}", IAF_K)]


# ---------------------------------------------------------------------------------------------- ours


def our_overrides(spec: str, args: argparse.Namespace, device: str) -> list[str]:
    """The config overrides that make our run match pythae's loop: no warm-up, no clipping, no early
    stopping, the last epoch's weights, and the analytic KL for the mean-field guide (as pythae's VAE)."""
    overrides = [
        f"data.root={args.data_root}",
        f"train.epochs={args.epochs}",
        f"train.batch_size={BATCH}",
        f"train.lr={LR}",
        "train.optimizer=adam",
        "train.kl_warmup_epochs=0",
        "train.clip_norm=none",
        "train.patience=none",
        "train.restore_best=false",
        "train.progress=false",
        f"train.seed={args.seed}",
        f"train.device={device}",
        f"train.elbo={'mean_field' if spec == 'mean_field' else 'trace'}",
        f"eval.iw_samples={args.iw_samples}",
        f"eval.test_limit={args.test_limit}",
    ]
    if args.smoke:
        overrides.append(f"data.limit={args.train_limit}")
    return overrides


def run_ours(spec: str, args: argparse.Namespace, device: str, out: Path) -> dict:
    folder = out / "ours" / spec.replace(":", "_")
    shutil.rmtree(folder, ignore_errors=True)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    (row,) = compare(CONFIG, [spec], folder, our_overrides(spec, args, device))
    wall = time.perf_counter() - start
    log = [json.loads(line) for line in next(folder.glob("*/log.jsonl")).read_text().splitlines()]
    train_seconds = sum(r["seconds"] for r in log)
    return {
        "library": "pyro_flowvae",
        "model": spec,
        "K": row["num_flows"],
        "epochs": row["epochs"],
        "train_examples_per_s": row["train_examples_per_s"],
        "train_seconds": train_seconds,
        "test_elbo": row["test_elbo"],
        "test_log_px": row["test_log_px"],
        "test_log_px_stderr": row["test_log_px_stderr"],
        "pareto_k_share_above_0_7": row["pareto_k_share_above_0_7"],
        "iw_samples": row["iw_samples"],
        "num_test": row["num_test"],
        "num_params": row["num_params"],
        "train_elbo_per_epoch": [r["train_elbo"] for r in log],
        "wall_seconds": wall,
        "load_average_before": load_before,
    }


# -------------------------------------------------------------------------------------------- pythae


def planar_step(
    z: torch.Tensor, u: torch.Tensor, w: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One planar layer z + u tanh(w.z + b) (u, w of shape (1, L), as pythae stores them) and its exact
    log|det J| = log|1 + (1 - tanh^2(w.z + b)) w.u| (pythae adds 1e-4 inside the log)."""
    lin = z @ w.T + b  # (N, 1)
    act = torch.tanh(lin)
    log_det = torch.log(torch.abs(1 + (1 - act**2).squeeze(-1) * (w * u).sum()))
    return z + u * act, log_det


def push_through_flow(model: nn.Module, z0: torch.Tensor, exact: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """z_K and log|det dz_K/dz_0| for rows z0 of a pythae VAE, VAE_LinNF or VAE_IAF, as its forward does
    (``exact``: planar log-determinants without pythae's +1e-4)."""
    log_det = torch.zeros(z0.shape[0], device=z0.device, dtype=z0.dtype)
    if model.model_name == "VAE":
        return z0, log_det
    if model.model_name == "VAE_IAF":
        out = model.iaf_flow.inverse(z0)
        return out.out, out.log_abs_det_jac
    if model.model_name != "VAE_LinNF":
        raise ValueError(f"unsupported pythae model {model.model_name!r}")
    z = z0
    for layer in model.net:
        if exact and layer.model_name == "PlanarFlow":
            z, step = planar_step(z, layer.u, layer.w, layer.b)
        else:
            out = layer(z)
            z, step = out.out, out.log_abs_det_jac
        log_det = log_det + step
    return z, log_det


def log_weights(encode, flow, logits, x: torch.Tensor, num_samples: int, sample_chunk: int = 250) -> torch.Tensor:
    """log w = log p(x | z_K) + log p(z_K) - log q(z_K | x) for ``num_samples`` draws per row of x:
    (N, num_samples). ``encode(x)`` gives (mean, log-variance) of q(z_0 | x), ``flow(z0)`` gives (z_K, log|det|)
    and ``logits(z)`` the Bernoulli logits of p(x | z); log q(z_K | x) = log q(z_0 | x) - log|det|."""
    mu, log_var = encode(x)
    base = torch.distributions.Normal(mu, torch.exp(0.5 * log_var))
    chunks = []
    for start in range(0, num_samples, sample_chunk):
        k = min(sample_chunk, num_samples - start)
        z0 = base.rsample((k,))  # (k, N, L)
        zk, log_det = flow(z0.reshape(-1, z0.shape[-1]))
        log_q = base.log_prob(z0).sum(-1).reshape(-1) - log_det
        log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(zk).sum(-1)
        target = x.expand(k, *x.shape).reshape(-1, x.shape[-1])
        log_lik = -F.binary_cross_entropy_with_logits(logits(zk), target, reduction="none").sum(-1)
        chunks.append((log_lik + log_prior - log_q).reshape(k, -1))
    return torch.cat(chunks).T


@torch.no_grad()
def importance_metrics(encode, flow, logits, x: torch.Tensor, num_samples: int, data_chunk: int = 100) -> dict:
    """The test ELBO (mean log weight) and the IWAE bound on log p(x) per datapoint, with standard errors."""
    elbo, log_px = [], []
    for start in range(0, x.shape[0], data_chunk):
        w = log_weights(encode, flow, logits, x[start : start + data_chunk], num_samples)
        elbo.append(w.mean(-1))
        log_px.append(torch.logsumexp(w, -1) - math.log(num_samples))
    elbo, log_px = torch.cat(elbo).double(), torch.cat(log_px).double()
    n = x.shape[0]

    def stderr(v: torch.Tensor) -> float:
        return float(v.std() / math.sqrt(n)) if n > 1 else float("nan")

    return {
        "elbo": float(elbo.mean()),
        "elbo_stderr": stderr(elbo),
        "log_px": float(log_px.mean()),
        "log_px_stderr": stderr(log_px),
    }


def flow_checks(model: nn.Module, num: int = 4) -> dict:
    """The pythae flow's log-determinant against the autograd Jacobian (float64, ``num`` random points), and
    for planar layers the invertibility condition w.u >= -1 of each layer."""
    if model.model_name == "VAE":
        return {}
    model = model.double()
    try:
        z = torch.randn(num, LATENT, dtype=torch.float64)
        worst_pythae, worst_exact = 0.0, 0.0
        for row in z:

            def push(v: torch.Tensor) -> torch.Tensor:
                return push_through_flow(model, v.unsqueeze(0), exact=False)[0].squeeze(0)

            jac = torch.autograd.functional.jacobian(push, row)
            truth = float(torch.linalg.slogdet(jac)[1])
            with torch.no_grad():
                pythae = float(push_through_flow(model, row.unsqueeze(0), exact=False)[1].reshape(()))
                exact = float(push_through_flow(model, row.unsqueeze(0), exact=True)[1].reshape(()))
            worst_pythae = max(worst_pythae, abs(pythae - truth))
            worst_exact = max(worst_exact, abs(exact - truth))
        checks = {"log_det_max_abs_error_pythae": worst_pythae, "log_det_max_abs_error_exact": worst_exact}
        if model.model_name == "VAE_LinNF":
            wu = [float((layer.w * layer.u).sum()) for layer in model.net]
            checks["planar_w_dot_u"] = wu
            checks["planar_noninvertible_layers"] = sum(v < -1 for v in wu)
        return checks
    finally:
        model.float()


def pythae_networks(data_dim: int):
    """Our MLP as pythae's custom encoder and decoder (pythae imported here: it is no dependency of ours)."""
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    from pyro_flowvae.models.nets import mlp

    class Encoder(BaseEncoder):
        """x -> h (784-300-300, ReLU) -> one linear head for (mean, log-variance), as our guide's."""

        def __init__(self) -> None:
            BaseEncoder.__init__(self)
            self.net = mlp([data_dim, *HIDDEN], "relu", final_activation=True)
            self.head = nn.Linear(HIDDEN[-1], 2 * LATENT)

        def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mu, log_var = self.head(self.net(x.reshape(x.shape[0], -1))).chunk(2, dim=-1)
            return mu, log_var

        def forward(self, x: torch.Tensor) -> ModelOutput:
            mu, log_var = self.moments(x)
            return ModelOutput(embedding=mu, log_covariance=log_var)

    class Decoder(BaseDecoder):
        """z -> 300-300 (ReLU) -> 784 logits; pythae's BCE loss wants probabilities, so forward gives sigmoid."""

        def __init__(self) -> None:
            BaseDecoder.__init__(self)
            self.net = mlp([LATENT, *reversed(HIDDEN), data_dim], "relu")

        def logits(self, z: torch.Tensor) -> torch.Tensor:
            return self.net(z)

        def forward(self, z: torch.Tensor) -> ModelOutput:
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))

    return Encoder(), Decoder()


def build_pythae(name: str, data_dim: int) -> nn.Module:
    from pythae.models import VAE, VAE_IAF, VAE_IAF_Config, VAE_LinNF, VAE_LinNF_Config, VAEConfig

    common = {"input_dim": (data_dim,), "latent_dim": LATENT, "reconstruction_loss": "bce"}
    encoder, decoder = pythae_networks(data_dim)
    if name == "VAE":
        return VAE(VAEConfig(**common), encoder=encoder, decoder=decoder)
    if name == "VAE_LinNF":
        return VAE_LinNF(VAE_LinNF_Config(**common, flows=["Planar"] * PLANAR_K), encoder=encoder, decoder=decoder)
    if name == "VAE_IAF":
        assert len(set(IAF_HIDDEN)) == 1  # pythae's MADE layers all have one width
        config = VAE_IAF_Config(
            **common, n_made_blocks=IAF_K, n_hidden_in_made=len(IAF_HIDDEN), hidden_size=IAF_HIDDEN[0]
        )
        return VAE_IAF(config, encoder=encoder, decoder=decoder)
    raise ValueError(f"unknown pythae model {name!r}")


def run_pythae(name: str, k: int, data, args: argparse.Namespace, device: str, out: Path) -> dict:
    from pythae.data.datasets import BaseDataset
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    folder = out / "pythae" / name
    shutil.rmtree(folder, ignore_errors=True)
    load_before = os.getloadavg()[0]
    begin = time.perf_counter()
    torch.manual_seed(args.seed)
    model = build_pythae(name, data.data_dim)
    at_init = flow_checks(model).get("planar_noninvertible_layers")
    train = data.train[: args.train_limit] if args.smoke else data.train
    config = BaseTrainerConfig(
        output_dir=str(folder),
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=BATCH,
        num_epochs=args.epochs,
        learning_rate=LR,
        optimizer_cls="Adam",
        seed=args.seed,
        no_cuda=device != "cuda",
    )
    # No eval_dataset: pythae then keeps the best model on the train loss; we score trainer.model, the last
    # epoch's weights, as ours (train.restore_best=false). Each train_step call is one training epoch.
    trainer = BaseTrainer(model, BaseDataset(train, torch.zeros(train.shape[0])), None, training_config=config)
    epoch_seconds, epoch_losses = [], []
    train_step = trainer.train_step

    def timed_train_step(epoch: int) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        tick = time.perf_counter()
        loss = train_step(epoch)
        if device == "cuda":
            torch.cuda.synchronize()
        epoch_seconds.append(time.perf_counter() - tick)
        epoch_losses.append(float(loss))
        return loss

    trainer.train_step = timed_train_step
    trainer.train()
    model = trainer.model.eval()
    train_seconds = sum(epoch_seconds)

    test = data.test[spread_subset(data.test.shape[0], args.test_limit)].to(device)  # the images ours scores
    start = time.perf_counter()
    with torch.no_grad():  # get_nll builds autograd graphs without it
        batch = min(args.iw_samples, 1000)
        nll_samples = batch if args.iw_samples <= batch else (args.iw_samples // batch) * batch
        get_nll = float(model.get_nll(test, n_samples=args.iw_samples, batch_size=batch))
    get_nll_seconds = time.perf_counter() - start

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    ours = importance_metrics(
        model.encoder.moments, lambda z: push_through_flow(model, z), model.decoder.logits, test, args.iw_samples
    )
    check_seconds = time.perf_counter() - start
    model.cpu()
    return {
        "library": "pythae",
        "model": name,
        "K": k,
        "epochs": len(epoch_seconds),
        "train_examples_per_s": len(epoch_seconds) * train.shape[0] / train_seconds,
        "train_seconds": train_seconds,
        "test_elbo": ours["elbo"],
        "test_log_px": get_nll,
        "test_log_px_stderr": ours["log_px_stderr"],
        "test_log_px_own_estimator": ours["log_px"],
        "test_elbo_stderr": ours["elbo_stderr"],
        "iw_samples": nll_samples,
        "num_test": int(test.shape[0]),
        "num_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_elbo_per_epoch": [-v for v in epoch_losses],
        "get_nll_seconds": get_nll_seconds,
        "own_estimator_seconds": check_seconds,
        "flow_checks": {
            **flow_checks(model),
            **({"planar_noninvertible_layers_at_init": at_init} if at_init is not None else {}),
        },
        "wall_seconds": time.perf_counter() - begin,
        "load_average_before": load_before,
    }


# ---------------------------------------------------------------------------------------------- table


def throughput_ratios(rows: list[dict]) -> dict[str, float]:
    """ours / pythae training examples/s per pair, keyed by pythae's model name."""
    ours = {r["model"]: r for r in rows if r["library"] == "pyro_flowvae"}
    theirs = {r["model"]: r for r in rows if r["library"] == "pythae"}
    return {
        name: ours[spec]["train_examples_per_s"] / theirs[name]["train_examples_per_s"]
        for name, spec, _ in PAIRS
        if spec in ours and name in theirs
    }


def format_rows(rows: list[dict]) -> str:
    """A Markdown table: one row per library and model."""
    lines = [
        "| library | model | K | epochs | train examples/s | test ELBO | log p(x) (IW) | IW samples | test images "
        "| params |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        own = r.get("test_log_px_own_estimator")
        log_px = f"{r['test_log_px']:.2f}" + (f" (own: {own:.2f})" if own is not None else "")
        lines.append(
            f"| {r['library']} | {r['model']} | {r['K']} | {r['epochs']} | {r['train_examples_per_s']:,.0f} | "
            f"{r['test_elbo']:.2f} | {log_px} | {r['iw_samples']} | {r['num_test']} | {r['num_params']:,} |"
        )
    return "\n".join(lines)


def pythae_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("pythae", "pydantic"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def main(args: argparse.Namespace) -> dict:
    if args.smoke:
        args.epochs, args.iw_samples, args.test_limit = 1, 30, 20
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    out = Path(args.out)
    begin = time.perf_counter()
    data = load_run_data(load_config(CONFIG, [f"data.root={args.data_root}"]))
    rows = []
    wanted = args.models.split(",")
    for name, spec, k in PAIRS:
        if name not in wanted:
            continue
        rows.append(run_ours(spec, args, device, out))
        print(format_rows(rows[-1:]), flush=True)
        rows.append(run_pythae(name, k, data, args, device, out))
        print(format_rows(rows[-1:]), flush=True)
    ratios = throughput_ratios(rows)
    result = {
        "machine": machine(),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "versions": {**versions(), **pythae_versions()},
        "command": f"python benchmarks/pythae_compare.py --data-root DATA --epochs {args.epochs} "
        f"--iw-samples {args.iw_samples} --test-limit {args.test_limit}",
        "settings": {
            "data": "statically binarized MNIST (binarized_mnist.npz): 50000 train, test images spread over the set",
            "architecture": "encoder 784-300-300 -> (mean, log-variance) 40, decoder 40-300-300-784, ReLU, Bernoulli",
            "batch_size": BATCH,
            "lr": LR,
            "optimizer": "Adam, no gradient clipping",
            "epochs": args.epochs,
            "kl_warmup_epochs": 0,
            "early_stopping": False,
            "weights_scored": "last epoch",
            "iw_samples": args.iw_samples,
            "test_limit": args.test_limit,
            "seed": args.seed,
            "planar": f"ours amortized (u, w, b from h, u constrained so w.u > -1); pythae "
            f"flows=['Planar']*{PLANAR_K}, global parameters, u unconstrained",
            "iaf": f"ours {IAF_K} gated blocks, MADE {list(IAF_HIDDEN)} reading h as context; pythae "
            f"n_made_blocks={IAF_K}, n_hidden_in_made={len(IAF_HIDDEN)}, hidden_size={IAF_HIDDEN[0]}, "
            "affine z*exp(s)+m, no context",
            "kl": "mean_field/VAE analytic Gaussian KL on both sides; flows a one-sample estimate on both sides",
            "throughput": "training examples per second over the training epochs only (no validation/eval)",
            "pythae_log_px": "model.get_nll under torch.no_grad (batch_size=min(iw_samples, 1000)); "
            "test_log_px_own_estimator and test_elbo from our importance sampler on the pythae modules",
        },
        "rows": rows,
        "throughput_ratio_ours_over_pythae": ratios,
        "load_average_after": os.getloadavg()[0],
        "wall_seconds": time.perf_counter() - begin,
    }
    print(format_rows(rows))
    for name, ratio in ratios.items():
        print(f"{name}: ours / pythae training examples/s = {ratio:.2f}")
    if not args.smoke:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"pythae_{device}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data", help="folder holding binarized_mnist.npz")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--iw-samples", type=int, default=1000)
    parser.add_argument("--test-limit", type=int, default=1000, help="score N test images spread over the test set")
    parser.add_argument("--models", default=",".join(p[0] for p in PAIRS), help="pythae models (and their pairs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even when CUDA is present")
    parser.add_argument("--out", default="runs/pythae_compare", help="run directories of both sides")
    parser.add_argument("--train-limit", type=int, default=300, help="--smoke: training images")
    parser.add_argument("--smoke", action="store_true", help="1 epoch on a few images, nothing written")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
