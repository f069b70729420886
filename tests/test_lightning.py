"""The Lightning callback (optional extra ``[lightning]``): skipped where Lightning is not installed."""

import pytest
import torch
import torch.nn.functional as F

pl = pytest.importorskip("lightning.pytorch")

from bayessparse.lightning import Sparsify  # noqa: E402
from bayessparse.sparsifier import sparsify  # noqa: E402
from tests.test_sparsifier import Tiny, _data  # noqa: E402


class Module(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = Tiny()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.05)


def _loader():
    x, y = _data()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=False)


def _trainer(callback, epochs=3, **kwargs):
    return pl.Trainer(max_epochs=epochs, callbacks=[callback], accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)


@pytest.mark.parametrize("method", ["rigl", "cigl"])
def test_lightning_trains_what_the_sparsifier_loop_trains(method):
    """Same model, optimizer and batches: the callback's weights and masks are the plain loop's, bit for bit."""
    module = Module()
    callback = Sparsify(method, sparsity=0.8, update_interval=5, drop_rate=0.1) if method == "cigl" else \
        Sparsify(method, sparsity=0.8, update_interval=5)
    _trainer(callback).fit(module, _loader())

    reference = Module()
    optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.05)
    options = {"drop_rate": 0.1} if method == "cigl" else {}
    loader = _loader()
    sparsifier = sparsify(reference, optimizer, method, sparsity=0.8, total_steps=3 * len(loader),
                          steps_per_epoch=len(loader), update_interval=5, **options)
    for _ in range(3):
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            with sparsifier.forward():
                F.cross_entropy(reference(x), y).backward()
            sparsifier.step()
        sparsifier.end_of_epoch()
    assert callback.sparsifier.t == sparsifier.t == 24
    for name, mask in sparsifier.masks.items():
        assert torch.equal(callback.sparsifier.masks[name], mask), name
    for (name, a), b in zip(module.named_parameters(), reference.parameters()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(callback.final_model().named_parameters(), sparsifier.final_model().parameters()):
        assert torch.equal(a, b), name


def test_lightning_keeps_exact_sparsity_with_gradient_accumulation():
    module = Module()
    callback = Sparsify("rigl", sparsity=0.9, update_interval=2)
    _trainer(callback, epochs=2, accumulate_grad_batches=2).fit(module, _loader())
    assert callback.sparsifier.t == 8  # 16 batches, 2 per optimizer step
    for name, mask in callback.sparsifier.masks.items():
        weight = dict(module.named_parameters())[name]
        assert int(torch.count_nonzero(weight)) <= int(mask.sum()) and bool((weight[mask == 0] == 0).all())


def test_a_lightning_checkpoint_resumes_the_masks(tmp_path):
    """A Trainer resumed from the checkpoint of epoch 2 of 4 ends with the masks and weights of the straight run."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def trainer(callback):
        saver = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
        return pl.Trainer(max_epochs=4, callbacks=[callback, saver], accelerator="cpu", logger=False,
                          enable_progress_bar=False, enable_model_summary=False)

    straight_module, straight = Module(), Sparsify("rigl", sparsity=0.8, update_interval=5)
    trainer(straight).fit(straight_module, _loader())
    checkpoint = tmp_path / "epoch=1-step=16.ckpt"
    assert checkpoint.exists()

    resumed_module, resumed = Module(), Sparsify("rigl", sparsity=0.8, update_interval=5)
    trainer(resumed).fit(resumed_module, _loader(), ckpt_path=checkpoint)
    assert resumed.sparsifier.t == straight.sparsifier.t == 32
    for name, mask in straight.sparsifier.masks.items():
        assert torch.equal(resumed.sparsifier.masks[name], mask), name
    for (name, a), b in zip(straight_module.named_parameters(), resumed_module.parameters()):
        assert torch.equal(a, b), name
