"""Hugging Face transformers: GPT-2's Conv1D, save_pretrained -> sparseprop.hf.from_pretrained,
a Trainer step. Tiny models built from configs (no downloads); skipped without transformers."""
import copy
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import sparseprop  # noqa: E402
from sparseprop import SparseConv1D, SparseLinear  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # HF's config chatter


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=64, n_layer=2, n_head=4,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def _bert():
    cfg = transformers.BertConfig(vocab_size=32, hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=256,
                                  max_position_embeddings=16, type_vocab_size=1, pad_token_id=0)
    return transformers.BertModel(cfg)


def _llama():
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=64, intermediate_size=256,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=16,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg)


def _out(model, ids):
    out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _masked_dense_twin(dense, sparse_model):
    """``dense`` with every weight of a layer that is sparse in ``sparse_model`` masked."""
    twin = copy.deepcopy(dense)
    for name, layer in sparse_model.named_modules():
        if isinstance(layer, SparseLinear):
            mod = twin.get_submodule(name)
            keep = layer.pattern.to_dense(torch.ones_like(layer.values)).view(layer.weight_shape)
            with torch.no_grad():
                mod.weight.mul_(keep.t() if isinstance(mod, Conv1D) else keep)
    return twin


def test_gpt2_conv1d_layers_become_sparse_and_match_masked_dense():
    torch.manual_seed(0)
    dense = _gpt2().eval()
    model = sparseprop.sparsify(copy.deepcopy(dense), 0.9)
    conv1d = [n for n, m in dense.named_modules() if isinstance(m, Conv1D)]
    assert len(conv1d) == 8
    for name in conv1d:
        layer = model.get_submodule(name)
        assert isinstance(layer, SparseConv1D) and abs(layer.sparsity - 0.9) < 1e-2
    ref = _masked_dense_twin(dense, model)
    ids = torch.randint(0, 32, (3, 12))
    out, out_ref = _out(model, ids), _out(ref, ids)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_ref.backward(grad)
    for name in conv1d:
        layer, dense_layer = model.get_submodule(name), ref.get_submodule(name)
        torch.testing.assert_close(layer.values.grad,
                                   layer.pattern.gather(dense_layer.weight.grad.t()),
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layer.bias.grad, dense_layer.bias.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.transformer.wte.weight.grad, ref.transformer.wte.weight.grad,
                               rtol=1e-4, atol=1e-5)


def test_conv1d_types_densify_and_summary():
    torch.manual_seed(0)
    model = _gpt2().eval()
    report = sparseprop.sparsify(model, 0.8, types=(Conv1D,), return_report=True)
    assert len(report) == 8 and all(r["type"] == "Conv1D" for r in report)
    assert report.model is model and isinstance(model.lm_head, torch.nn.Linear)
    rows = {r["layer"]: r for r in sparseprop.summary(model)}  # sparse: (out, in) shapes
    c_fc = rows["transformer.h.0.mlp.c_fc"]
    assert c_fc["shape"] == (256, 64) and c_fc["nnz"] == model.transformer.h[0].mlp.c_fc.nnz
    ids = torch.randint(0, 32, (2, 10))
    expected = _out(model, ids)
    dense = sparseprop.densify(model, inplace=False)
    layer = dense.transformer.h[0].mlp.c_fc
    assert type(layer) is Conv1D and tuple(layer.weight.shape) == (64, 256)
    torch.testing.assert_close(_out(dense, ids), expected, rtol=1e-5, atol=1e-6)
    # densify -> sparsify round trip keeps the pattern
    again = sparseprop.sparsify(dense, min_sparsity=0.75)
    torch.testing.assert_close(_out(again, ids), expected, rtol=1e-5, atol=1e-6)
    single = sparseprop.sparsify(Conv1D(8, 4), 0.5)
    assert isinstance(single, SparseConv1D) and (single.nf, single.nx) == (8, 4)
    with pytest.raises(TypeError, match="Conv1D"):
        SparseConv1D.from_dense(torch.nn.Linear(4, 8))


@pytest.mark.parametrize("build", [_bert, _gpt2, _llama], ids=["bert", "gpt2", "llama"])
def test_save_pretrained_loads_back_sparse(build, tmp_path):
    torch.manual_seed(0)
    model = build().eval()
    dense_dir, sparse_dir = tmp_path / "dense", tmp_path / "sparse"
    model.save_pretrained(dense_dir)
    model = sparseprop.sparsify(model, 0.9)
    n_sparse = sum(isinstance(m, SparseLinear) for m in model.modules())
    assert n_sparse >= 8  # BERT 12, GPT-2 8 (Conv1D), Llama 15 (lm_head untied)
    model.save_pretrained(sparse_dir)
    size = lambda d: os.path.getsize(d / "model.safetensors")  # noqa: E731
    ratio = size(sparse_dir) / size(dense_dir)
    assert ratio < 0.3, ratio

    loaded = sparseprop.hf.from_pretrained(type(model), str(sparse_dir))
    assert sum(isinstance(m, SparseLinear) for m in loaded.modules()) == n_sparse
    for (name, a), (_, b) in zip(model.named_modules(), loaded.named_modules()):
        assert type(a) is type(b), name
        if isinstance(a, SparseLinear):
            assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)
    ids = torch.randint(1, 32, (2, 12))
    with torch.no_grad():
        assert torch.equal(_out(loaded, ids), _out(model, ids))
    # plain from_pretrained cannot do this (dense layers, sparse keys unexpected)
    plain = type(model).from_pretrained(str(sparse_dir))
    assert not any(isinstance(m, SparseLinear) for m in plain.modules())


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="directory"):
        sparseprop.hf.from_pretrained(transformers.GPT2LMHeadModel, str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        sparseprop.hf.from_pretrained(transformers.GPT2LMHeadModel, str(tmp_path))
    model = sparseprop.sparsify(_gpt2(), 0.9)
    model.save_pretrained(tmp_path / "gpt2")
    # a BERT has no layer at GPT-2's sparse names
    with pytest.raises(ValueError, match="does not have"):
        sparseprop.hf.from_pretrained(transformers.BertModel, str(tmp_path / "gpt2"))


def test_trainer_step_on_sparse_gpt2(tmp_path):
    pytest.importorskip("accelerate")
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = sparseprop.sparsify(_gpt2(), 0.9)
    layer = model.transformer.h[0].mlp.c_fc
    before, nnz = layer.values.detach().clone(), layer.nnz
    ids = torch.randint(0, 32, (8, 12))
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4,
                             max_steps=2, learning_rate=1e-2, report_to=[], use_cpu=True,
                             save_strategy="no", logging_steps=1, disable_tqdm=True)
    result = Trainer(model=model, args=args, train_dataset=data).train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    layer = model.transformer.h[0].mlp.c_fc
    assert isinstance(layer, SparseConv1D) and layer.nnz == nnz
    assert not torch.equal(layer.values.detach(), before)


def test_pruners_find_sparse_conv1d_layers():
    from sparseprop.pruning import MagnitudePruner

    torch.manual_seed(0)
    model = sparseprop.sparsify(_gpt2(), 0.8)  # Conv1D -> SparseConv1D, which pruners see
    opt = torch.optim.AdamW(model.parameters())
    MagnitudePruner(model, opt, sparsity=0.9)
    for name, module in model.named_modules():
        if isinstance(module, SparseConv1D):
            assert abs(module.sparsity - 0.9) < 1e-2, name
    ids = torch.randint(0, 32, (2, 8))
    _out(model, ids).sum().backward()
    opt.step()


def test_from_pretrained_auto_class_and_shards(tmp_path):
    torch.manual_seed(0)
    model = sparseprop.sparsify(_llama().eval(), 0.9)
    model.save_pretrained(tmp_path, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    loaded = sparseprop.hf.from_pretrained(transformers.AutoModelForCausalLM, str(tmp_path))
    assert type(loaded) is type(model)
    assert isinstance(loaded.model.layers[1].mlp.down_proj, SparseLinear)
    ids = torch.randint(1, 32, (2, 12))
    with torch.no_grad():
        assert torch.equal(_out(loaded, ids), _out(model, ids))


def test_missing_dependency_is_a_clear_error(tmp_path, monkeypatch):
    model = sparseprop.sparsify(_gpt2(), 0.9)
    model.save_pretrained(tmp_path)
    import sys
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match=r"sparseprop.hf needs safetensors"):
        sparseprop.hf.from_pretrained(transformers.GPT2LMHeadModel, str(tmp_path))


def test_sparse_gpt2_state_dict_loads_into_dense_gpt2():
    torch.manual_seed(0)
    model = sparseprop.sparsify(_gpt2().eval(), 0.9)
    dense = _gpt2().eval()  # other random weights, Conv1D layers (square c_proj included)
    sparseprop.load_dense_state_dict(dense, model.state_dict())
    assert type(dense.transformer.h[0].attn.c_proj) is Conv1D
    ids = torch.randint(0, 32, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(_out(dense, ids), _out(model, ids), rtol=1e-5, atol=1e-6)
