"""The training loop's engine options: exact gradient accumulation, bf16 autocast, clipping, config checks."""

import copy

import pytest
import torch
from torch import nn

from zeroseg.config import EngineConfig
from zeroseg.engine.distributed import CPUSyncBatchNorm, convert_sync_batchnorm, maybe_sync_batchnorm
from zeroseg.engine.train import autocast_context, check_engine_config, loss_normaliser, train_one_epoch
from zeroseg.errors import ZeroSegError

CPU = torch.device("cpu")


def _tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 1))


def _uneven_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """4 images of 8x8: the first two have 2 labelled pixels each, the last two are fully labelled."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 8, 8, generator=g)
    labels = torch.randint(0, 3, (4, 8, 8), generator=g)
    labels[:2] = 255
    labels[0, 0, 0], labels[0, 3, 5], labels[1, 7, 7], labels[1, 2, 2] = 0, 1, 2, 1
    return images, labels


def _one_step(net: nn.Module, images, labels, **kwargs) -> tuple[nn.Module, float]:
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    loss = train_one_epoch(
        net,
        [(images, labels, ["a"] * len(images))],
        opt,
        None,
        criterion=kwargs.pop("criterion", nn.CrossEntropyLoss(ignore_index=255)),
        device=CPU,
        progress=False,
        **kwargs,
    )
    return net, loss


def _flat(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def test_loss_normaliser_counts_valid_pixels_and_class_weights() -> None:
    labels = torch.tensor([[[0, 255], [2, 2]]])  # 3 valid pixels: classes 0, 2, 2
    assert loss_normaliser(nn.CrossEntropyLoss(ignore_index=255), labels).item() == 3.0
    weighted = nn.CrossEntropyLoss(weight=torch.tensor([0.5, 1.0, 4.0]), ignore_index=255)
    assert loss_normaliser(weighted, labels).item() == 0.5 + 4.0 + 4.0
    assert loss_normaliser(nn.MSELoss(), torch.zeros(5, 2)).item() == 5.0  # other criteria: per sample


@pytest.mark.parametrize("weight", [None, (0.2, 1.0, 3.0)])
def test_grad_accum_equals_full_batch_with_uneven_ignore(weight) -> None:
    images, labels = _uneven_batch()

    def criterion() -> nn.CrossEntropyLoss:
        return nn.CrossEntropyLoss(weight=None if weight is None else torch.tensor(weight), ignore_index=255)

    full, loss_full = _one_step(_tiny_net(), images, labels, criterion=criterion())
    accum, loss_accum = _one_step(_tiny_net(), images, labels, criterion=criterion(), grad_accum=2)
    torch.testing.assert_close(_flat(accum), _flat(full), atol=1e-6, rtol=0)
    assert loss_accum == pytest.approx(loss_full, abs=1e-6)
    # The loss reported is the full batch's mean: CE over the 4 + 128 valid pixels at the initial weights.
    expected = criterion()(_tiny_net()(images), labels).item()
    assert loss_full == pytest.approx(expected, abs=1e-6)

    # The case matters: averaging the two micro-batch means (a naive accumulation) gives another step.
    naive = _tiny_net()
    opt = torch.optim.SGD(naive.parameters(), lr=0.5)
    for x, y in zip(images.chunk(2), labels.chunk(2), strict=True):
        (criterion()(naive(x), y) / 2).backward()
    opt.step()
    assert (_flat(naive) - _flat(full)).abs().max() > 1e-3


def test_grad_accum_with_an_all_ignore_micro_batch() -> None:
    images, labels = _uneven_batch()
    labels[:2] = 255  # the first micro-batch has no valid pixel at all
    full, _ = _one_step(_tiny_net(), images, labels)
    accum, _ = _one_step(_tiny_net(), images, labels, grad_accum=2)
    torch.testing.assert_close(_flat(accum), _flat(full), atol=1e-6, rtol=0)


def test_all_ignore_batch_is_skipped() -> None:
    images, labels = _uneven_batch()
    labels[:] = 255
    net = _tiny_net()
    before = _flat(net).clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    loss = train_one_epoch(
        net,
        [(images, labels, [])],
        opt,
        sched,
        criterion=nn.CrossEntropyLoss(ignore_index=255),
        device=CPU,
        progress=False,
        grad_accum=2,
    )
    assert loss == 0.0 and torch.equal(_flat(net), before) and sched.last_epoch == 0


def test_bf16_is_ignored_on_cpu() -> None:
    images, labels = _uneven_batch()
    fp32, loss32 = _one_step(_tiny_net(), images, labels)
    bf16, loss16 = _one_step(_tiny_net(), images, labels, amp="bf16")
    assert torch.equal(_flat(bf16), _flat(fp32)) and loss16 == loss32
    with autocast_context(CPU, "bf16"):
        assert _tiny_net()(images).dtype == torch.float32


def test_clip_grad_norm_limits_the_step() -> None:
    images, labels = _uneven_batch()
    start = _flat(_tiny_net())
    clipped, _ = _one_step(_tiny_net(), images, labels, clip_grad_norm=1e-3)
    # SGD without momentum: the step is lr * clipped gradient, whose global norm is the clip value.
    assert (_flat(clipped) - start).norm().item() == pytest.approx(0.5 * 1e-3, rel=1e-4)


def test_engine_option_errors_name_the_key() -> None:
    with pytest.raises(ZeroSegError, match="engine.amp 'fp16'"):
        autocast_context(CPU, "fp16")
    with pytest.raises(ZeroSegError, match=r"engine.grad_accum 0: must be an integer >= 1"):
        check_engine_config(EngineConfig(grad_accum=0), batch_size=8, world=1)
    with pytest.raises(ZeroSegError, match=r"data.batch_size 6: .*world_size \(2\) x engine.grad_accum \(2\) = 4"):
        check_engine_config(EngineConfig(grad_accum=2), batch_size=6, world=2)
    check_engine_config(EngineConfig(amp="bf16", grad_accum=2), batch_size=8, world=2)  # fine


def test_sync_batchnorm_conversion_keeps_state_and_single_process_behaviour() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Sequential(nn.BatchNorm2d(4)))
    assert maybe_sync_batchnorm(net, True) is net and type(net[1]) is nn.BatchNorm2d  # one process: as is
    reference = copy.deepcopy(net)
    keys, weight = list(net.state_dict()), net[1].weight
    converted = convert_sync_batchnorm(net)
    assert converted is net and isinstance(net[1], CPUSyncBatchNorm) and isinstance(net[3][0], CPUSyncBatchNorm)
    assert net[1].weight is weight and list(net.state_dict()) == keys
    # Without a process group it is plain BatchNorm: same outputs and running statistics, in both modes.
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(net(x), reference(x))
    for a, b in zip(net.state_dict().values(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    net.eval()
    reference.eval()
    torch.testing.assert_close(net(x), reference(x))
    plain = copy.deepcopy(reference)
    plain.load_state_dict(net.state_dict())  # a converted model's state loads into the plain one


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 autocast runs on CUDA only")
def test_bf16_autocast_on_cuda() -> None:
    cuda = torch.device("cuda")
    images, labels = _uneven_batch()
    seen = []
    net = _tiny_net().to(cuda)
    net[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    loss = train_one_epoch(
        net,
        [(images, labels, [])],
        opt,
        None,
        criterion=nn.CrossEntropyLoss(ignore_index=255),
        device=cuda,
        progress=False,
        amp="bf16",
        grad_accum=2,
    )
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in net.parameters())
    fp32, loss32 = _one_step(_tiny_net(), images, labels, grad_accum=2)
    assert loss == pytest.approx(loss32, rel=2e-2)
    torch.testing.assert_close(_flat(net).cpu(), _flat(fp32), atol=2e-2, rtol=0)
