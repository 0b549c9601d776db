"""Files shared with the Rust crate, and what bad input gets back."""

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from fffast import FFF, MaskedFFF


def test_rust_file_loads_into_a_torch_state_dict_and_back(tmp_path):
    torch.manual_seed(0)
    layer = FFF(19, 6, 4, 2, activation="identity", init="normal(0.3)", seed=4)
    path = tmp_path / "layer.safetensors"
    layer.save_safetensors(path)  # written by the Rust crate
    # PyTorch reads it with the UltraFastBERT names and shapes.
    tensors = load_file(path)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        "linear_in.weight": (62, 19), "linear_in.bias": (62,), "linear_out.weight": (6, 62)}
    twin = MaskedFFF(19, 6, 4, 2, activation="identity")
    twin.load_state_dict(tensors)
    x = torch.randn(8, 19)
    torch.testing.assert_close(twin(x), layer(x))
    # The Rust crate reads it back, config included.
    back = FFF.from_safetensors(path)
    assert (back.depth, back.parallel_size, back.activation_name) == (4, 2, "identity")
    for a, b in zip(back.state_dict().values(), layer.state_dict().values()):
        assert torch.equal(a, b)
    assert not [p for p in os.listdir(tmp_path) if p != "layer.safetensors"], "temporary left"


def test_torch_saved_state_dict_loads_in_place(tmp_path):
    torch.manual_seed(1)
    source = MaskedFFF(10, 4, 3, 1, activation="gelu", init="normal(0.5)", seed=2)
    path = tmp_path / "torch.safetensors"
    save_file(source.state_dict(), path)
    layer = FFF(10, 4, 3, 1, activation="gelu")
    layer.load_state_dict(load_file(path))
    assert layer.linear_out.weight.t().is_contiguous(), "a load must keep the node-major layout"
    x = torch.randn(5, 10)
    torch.testing.assert_close(layer(x), source(x))
    assigned = FFF(10, 4, 3, 1, activation="gelu")
    assigned.load_state_dict(load_file(path), assign=True)
    assert assigned.linear_out.weight.t().is_contiguous()
    torch.testing.assert_close(assigned(x), source(x))
    # torch.save of the module's state dict round-trips too.
    torch.save(layer.state_dict(), tmp_path / "sd.pt")
    again = FFF(10, 4, 3, 1, activation="gelu")
    again.load_state_dict(torch.load(tmp_path / "sd.pt"))
    torch.testing.assert_close(again(x), source(x))


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    good = tmp_path / "good.safetensors"
    FFF(6, 3, 2, 1).save_safetensors(good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.safetensors"):
        FFF.from_safetensors(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="garbage.safetensors"):
        FFF.from_safetensors(garbage)
    with pytest.raises(ValueError, match="missing.safetensors"):
        FFF.from_safetensors(tmp_path / "missing.safetensors")
    no_config = tmp_path / "no_config.safetensors"
    save_file(FFF(6, 3, 2, 1).state_dict(), no_config)
    with pytest.raises(ValueError, match="metadata"):
        FFF.from_safetensors(no_config)


def test_non_finite_weights_are_refused_on_save(tmp_path):
    layer = FFF(6, 3, 2, 1)
    with torch.no_grad():
        layer.linear_in.bias[2] = float("inf")
    with pytest.raises(ValueError, match="linear_in.bias"):
        layer.save_safetensors(tmp_path / "x.safetensors")


def test_bad_inputs_name_the_tensor_and_what_was_expected():
    layer = FFF(8, 3, 2, 2)
    with pytest.raises(ValueError, match=r"`input` has shape \[4, 7\]; expected \[\.\.\., 8\]"):
        layer(torch.randn(4, 7))
    with pytest.raises(TypeError, match=r"`input` has dtype torch.float64; expected torch.float32"):
        layer(torch.randn(4, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"`input` is on meta; fffast runs on CPU"):
        layer(torch.randn(4, 8, device="meta"))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        layer([[0.0] * 8])
    with pytest.raises(ValueError, match=r"`input` has shape \[\]"):
        layer(torch.tensor(1.0))
    with pytest.raises(TypeError, match=r"`linear_in.weight` has dtype torch.float64"):
        FFF(8, 3, 2, 2).double()(torch.randn(1, 8, dtype=torch.float64).float())
    broken = FFF(8, 3, 2, 2)
    broken.linear_in.weight = torch.nn.Parameter(torch.randn(14, 9))
    with pytest.raises(ValueError, match=r"`linear_in.weight` has shape \[14, 9\]; expected \[14, 8\]"):
        broken(torch.randn(1, 8))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="activation is 'swish'"):
        FFF(4, 4, 1, activation="swish")
    with pytest.raises(ValueError, match="`depth` is -1"):
        FFF(4, 4, -1)
    with pytest.raises(ValueError, match="`parallel_size` is 0"):
        FFF(4, 4, 1, 0)
    with pytest.raises(ValueError, match="init"):
        FFF(4, 4, 1, init="xavier")
    with pytest.raises(ValueError, match="approximate"):
        FFF(4, 4, 1, activation=torch.nn.GELU(approximate="tanh"))


def test_copies_pickles_and_dtype_round_trips_keep_the_node_major_layout():
    import copy
    import io

    layer = FFF(10, 4, 3, 2, init="normal(0.5)")
    x = torch.randn(5, 10)
    with torch.inference_mode():
        expected = layer(x)
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    for other in [copy.deepcopy(layer), torch.load(buf, weights_only=False),
                  copy.deepcopy(layer).double().float()]:
        assert other.linear_out.weight.t().is_contiguous()
        with torch.no_grad():
            torch.testing.assert_close(other(x), expected)
