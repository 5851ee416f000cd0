"""Audio: AudioModality, speech_manifest, spoken_digits_fsdd, morse_code, and t2t-train /
t2t-decode end to end on an audio problem."""

from __future__ import annotations

import io
import json
import math
import random
import string
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import torch

import problems.fsdd
from modalities.audio import AudioModality
from problems.fsdd import WORDS, SpokenDigitsFsdd
from problems.morse import CODE, MorseCode, keying, synthesize
from problems.speech import SpeechManifest, read_manifest
from t2t import data, datagen
from t2t.errors import UserError

from .conftest import dataset_dir, run_command


def tone(seconds: float, rate: int, pitch: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * pitch * t)).astype(np.float32)


def stored(data_bytes: bytes) -> tuple[np.ndarray, int]:
    waveform, rate = soundfile.read(io.BytesIO(data_bytes), dtype="float32")
    return waveform, rate


# -- AudioModality: encode and load -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["path", "str_path", "bytes", "pair", "dict", "int16", "stereo"])
def test_encode_stores_mono_16_bit_flac_from_every_kind_of_input(kind, tmp_path):
    wave = tone(0.3, 8000)
    path = tmp_path / "a.wav"
    soundfile.write(path, wave, 8000, subtype="PCM_16")
    raw = {"path": path, "str_path": str(path), "bytes": path.read_bytes(), "pair": (wave, 8000),
           "dict": {"array": wave, "sampling_rate": 8000},
           "int16": ((wave * 32767).astype(np.int16), 8000),
           "stereo": (np.stack([wave, wave], axis=1), 8000)}[kind]
    encoded = AudioModality(sample_rate=8000).encode(raw)
    assert soundfile.info(io.BytesIO(encoded)).format == "FLAC"
    waveform, rate = stored(encoded)
    assert rate == 8000 and waveform.ndim == 1 and len(waveform) == len(wave)
    assert np.abs(waveform - wave).max() <= 2 / 32768  # 16-bit, nothing else lost


def test_other_sample_rates_are_resampled_keeping_duration_and_pitch(tmp_path):
    soundfile.write(tmp_path / "a.wav", tone(0.5, 16000, pitch=500), 16000)
    waveform, rate = stored(AudioModality(sample_rate=8000).encode(tmp_path / "a.wav"))
    assert rate == 8000 and len(waveform) == 4000
    spectrum = np.abs(np.fft.rfft(waveform))
    assert abs(np.argmax(spectrum) * 8000 / len(waveform) - 500) <= 4


@pytest.mark.parametrize("content", [b"", b"RIFF\x00\x00not really a wave file"])
def test_unreadable_audio_file_is_a_user_error_naming_it(tmp_path, content):
    path = tmp_path / "broken clip.wav"
    path.write_bytes(content)
    with pytest.raises(UserError, match="broken clip.wav: not a readable audio file"):
        AudioModality().encode(path)


def test_missing_audio_file_is_a_user_error_naming_it(tmp_path):
    with pytest.raises(UserError, match="gone.wav: audio file not found"):
        AudioModality().encode(tmp_path / "gone.wav")


def test_load_gives_the_waveform_and_length_counts_the_bottoms_frames():
    modality = AudioModality(sample_rate=8000, num_mels=40)
    bottom = modality.bottom(32).eval()
    for seconds in (0.02, 0.032, 0.05, 0.3, 1.0, 2.37):
        encoded = modality.encode((tone(seconds, 8000), 8000))
        loaded = modality.load(encoded)
        assert loaded.dtype == torch.float32 and loaded.shape == (int(seconds * 8000),)
        _, pad = bottom(*modality.collate([loaded]))
        assert int((~pad).sum()) == modality.length(encoded), seconds


def test_speed_perturbation_only_in_training_changes_duration_by_a_listed_factor():
    modality = AudioModality(sample_rate=8000, num_mels=40)
    augment = modality.augmentation(speed_perturb=[0.9, 1.1])
    encoded = modality.encode((tone(1.0, 8000, pitch=500), 8000))
    assert all(len(modality.load(encoded)) == 8000 for _ in range(5))  # evaluation: as stored
    torch.manual_seed(0)
    lengths = {len(modality.load(encoded, augment=augment)) for _ in range(20)}
    assert lengths == {round(8000 / 0.9), round(8000 / 1.1)}
    slow = modality.load(encoded, augment=augment)
    while len(slow) < 8000:
        slow = modality.load(encoded, augment=augment)
    spectrum = np.abs(np.fft.rfft(slow.numpy()))  # slower is lower: 500 Hz -> 450 Hz
    assert abs(np.argmax(spectrum) * 8000 / len(slow) - 450) < 5
    assert len(modality.load(encoded, augment=modality.augmentation())) == 8000  # none


def test_noise_is_added_only_in_training_at_an_snr_from_the_range():
    modality = AudioModality(sample_rate=8000, num_mels=40)
    augment = modality.augmentation(noise_snr_db=[10, 20])
    clean = tone(1.0, 8000, pitch=500)
    encoded = modality.encode((clean, 8000))
    stored = modality.load(encoded)
    assert torch.equal(modality.load(encoded), stored)  # evaluation: as stored
    torch.manual_seed(0)
    signal = stored.square().mean()
    snrs = [10 * math.log10(signal / (modality.load(encoded, augment=augment) - stored)
                            .square().mean()) for _ in range(20)]
    assert all(9.5 < snr < 20.5 for snr in snrs), snrs
    assert max(snrs) - min(snrs) > 3  # drawn per utterance, not fixed
    with pytest.raises(UserError, match="data.augment.audio.noise_snr_db"):
        modality.augmentation(noise_snr_db=[20, 10])


def test_speed_perturbation_factors_are_checked():
    with pytest.raises(UserError, match="data.augment.audio.speed_perturb"):
        AudioModality().augmentation(speed_perturb=[0.9, 3.0])


# -- AudioModality: the bottom --------------------------------------------------------------------


def test_an_utterance_gets_the_same_features_alone_and_in_a_padded_batch():
    modality = AudioModality(sample_rate=8000, num_mels=40)
    bottom = modality.bottom(48).eval()
    rng = np.random.default_rng(0)
    waves = [torch.from_numpy(rng.standard_normal(n).astype(np.float32) * 0.1)
             for n in (900, 8000, 3001)]
    batch, pad = bottom(*modality.collate(waves))
    assert batch.shape[:2] == pad.shape
    for i, wave in enumerate(waves):
        alone, alone_pad = bottom(*modality.collate([wave]))
        n = int((~pad[i]).sum())
        assert n == alone.shape[1] and not alone_pad.any()
        assert pad[i, n:].all() and not pad[i, :n].any()
        torch.testing.assert_close(batch[i, :n], alone[0], atol=1e-5, rtol=1e-4)


def test_spec_augment_only_in_training_and_only_when_enabled():
    wave = torch.from_numpy(np.random.default_rng(1).standard_normal(16000).astype(np.float32))
    for enabled in (True, False):
        modality = AudioModality(sample_rate=8000, num_mels=40, spec_augment=enabled)
        bottom = modality.bottom(32)
        batch = modality.collate([wave])
        torch.manual_seed(0)
        train_a, _ = bottom.train()(*batch)
        train_b, _ = bottom(*batch)
        eval_a, _ = bottom.eval()(*batch)
        eval_b, _ = bottom(*batch)
        assert torch.equal(eval_a, eval_b)
        assert torch.equal(train_a, eval_a) != enabled
        assert torch.equal(train_a, train_b) != enabled  # fresh masks every batch


def test_frequency_warp_moves_a_formant_by_at_most_the_warp_and_only_in_training():
    from modalities.audio import warp_frequencies

    features = torch.zeros(64, 40, 5)
    features[:, 20] = 1.0  # one "formant" at bin 20 in every frame
    torch.manual_seed(0)
    warped = warp_frequencies(features, 0.1)
    assert warped.shape == features.shape
    centre = (warped * torch.arange(40.0)[None, :, None]).sum(1) / warped.sum(1)  # (B, F)
    assert centre.min() >= 20 * 0.9 - 1e-4 and centre.max() <= 20 * 1.1 + 1e-4
    assert centre.std() > 0.5  # every utterance its own factor
    assert torch.allclose(centre[:, 0], centre[:, 4])  # the same factor in all its frames
    wave = torch.from_numpy(np.random.default_rng(2).standard_normal(8000).astype(np.float32))
    modality = AudioModality(sample_rate=8000, num_mels=40, spec_augment=False)
    bottom, batch = modality.bottom(32, freq_warp=0.1), modality.collate([wave])
    assert torch.equal(bottom.eval()(*batch)[0], bottom(*batch)[0])
    assert not torch.equal(bottom.train()(*batch)[0], bottom.eval()(*batch)[0])
    with pytest.raises(UserError, match="model.bottoms.audio.freq_warp"):
        modality.bottom(32, freq_warp=0.7)


def test_utterance_normalisation_keeps_a_tone_louder_than_the_noise_bins():
    """Per bin, a keyed tone's bin and a noise bin both get unit variance; normalising the
    utterance as a whole keeps the tone's bin apart (what Morse code needs)."""
    rate = 8000
    keyed = np.repeat(np.arange(20) % 2, rate // 20).astype(np.float32)  # 50 ms on, 50 off
    wave = tone(1.0, rate, pitch=600.0) * keyed
    wave += np.random.default_rng(3).standard_normal(len(wave)).astype(np.float32) * 0.005
    spread = {}
    for normalize in ("bin", "utterance"):
        modality = AudioModality(sample_rate=rate, num_mels=40, spec_augment=False,
                                 normalize=normalize)
        bottom = modality.bottom(32).eval()
        captured: list[torch.Tensor] = []
        bottom.conv1.register_forward_hook(lambda _m, args, _o, into=captured:
                                           into.append(args[0]))
        bottom(*modality.collate([torch.from_numpy(wave)]))
        features = captured[0][0, 0].T  # (M, F): the normalised log-mels the convolutions read
        spread[normalize] = features.std(dim=1, unbiased=False)
        if normalize == "utterance":  # zero mean and unit variance over all bins and frames
            assert abs(float(features.mean())) < 1e-4
            assert abs(float(features.std(unbiased=False)) - 1) < 1e-3
    # Per bin every bin's spread is 1: the tone's bin is one of 40 alike.
    assert torch.allclose(spread["bin"], torch.ones(40), atol=0.01)
    # As a whole, the tone's bin (600 Hz) moves most, several times as much as a typical bin.
    assert 10 <= int(spread["utterance"].argmax()) <= 14
    assert spread["utterance"].max() > 2.5 * spread["utterance"].median()


def test_modality_key_names_what_shapes_the_weights():
    assert AudioModality().key == AudioModality().key
    assert AudioModality(num_mels=40).key != AudioModality().key
    assert AudioModality(sample_rate=8000).key != AudioModality().key
    assert AudioModality(normalize="utterance").key != AudioModality().key


def test_unknown_normalisation_is_a_user_error_listing_the_choices():
    with pytest.raises(UserError, match=r"normalize must be one of \['bin', 'utterance'\]"):
        AudioModality(normalize="global")


def test_bad_window_is_a_user_error():
    with pytest.raises(UserError, match="window"):
        AudioModality(window_ms=5, hop_ms=10)


# -- speech_manifest ------------------------------------------------------------------------------


def write_manifest(folder: Path, entries: dict[str, str], rate: int = 16000) -> Path:
    """Clips (relative paths) of different lengths and their transcripts."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "clips").mkdir(exist_ok=True)
    lines = []
    for i, (name, text) in enumerate(entries.items()):
        soundfile.write(folder / "clips" / name, tone(0.2 + 0.05 * i, rate, 300 + 20 * i), rate)
        lines.append(json.dumps({"audio_filepath": f"clips/{name}", "text": text,
                                 "duration": 0.2 + 0.05 * i}))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_manifest_paths_resolve_against_the_manifest_folder(tmp_path):
    manifest = write_manifest(tmp_path / "corpus", {"a.wav": "hello", "b.wav": "world"})
    assert read_manifest(manifest) == [(tmp_path / "corpus" / "clips" / "a.wav", "hello"),
                                       (tmp_path / "corpus" / "clips" / "b.wav", "world")]


def test_single_manifest_holds_out_a_seeded_disjoint_validation_split(tmp_path):
    manifest = write_manifest(tmp_path, {f"{i}.wav": f"utterance {i}" for i in range(40)})
    problem = SpeechManifest(manifest=str(manifest))
    assert problem.splits == ("train", "validation")
    train = [s["targets"] for s in problem.generate_samples("train")]
    validation = [s["targets"] for s in problem.generate_samples("validation")]
    assert len(train) == 36 and len(validation) == 4 and not set(train) & set(validation)
    again = SpeechManifest(manifest=str(manifest)).generate_samples("validation")
    assert [s["targets"] for s in again] == validation


def test_separate_manifests_are_the_splits(tmp_path):
    train = write_manifest(tmp_path / "train", {f"{i}.wav": f"train {i}" for i in range(5)})
    valid = write_manifest(tmp_path / "valid", {"v.wav": "valid"})
    test = write_manifest(tmp_path / "test", {"t.wav": "test"})
    problem = SpeechManifest(train_manifest=str(train), validation_manifest=str(valid),
                             test_manifest=str(test))
    assert problem.splits == ("train", "validation", "test")
    texts = {split: [s["targets"] for s in problem.generate_samples(split)]
             for split in problem.splits}
    assert texts == {"train": [f"train {i}" for i in range(5)], "validation": ["valid"],
                     "test": ["test"]}


def test_manifest_datagen_resamples_a_clip_at_another_rate(tmp_path):
    manifest = write_manifest(tmp_path, {f"{i}.wav": f"word {i}" for i in range(10)})
    soundfile.write(tmp_path / "clips" / "0.wav", tone(0.4, 8000), 8000)  # 8 kHz among 16 kHz
    problem = SpeechManifest(manifest=str(manifest), holdout_size=1)
    problem_dir = datagen.generate(problem, tmp_path / "data", progress=False)
    samples = {s["key"]: s for s in data.read_split(SpeechManifest(
        manifest=str(manifest), holdout_size=1), problem_dir, "train")}
    assert len(samples) == 9
    index = next(i for i, s in enumerate(problem.generate_samples("train"))
                 if s["inputs"].name == "0.wav")
    assert samples[f"{index:09d}"]["inputs"].shape == (6400,)  # 0.4 s at 16 kHz


def bad_manifest(tmp_path: Path) -> Path:
    manifest = write_manifest(tmp_path, {f"{i}.wav": f"word {i}" for i in range(10)})
    (tmp_path / "clips" / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    with open(manifest, "a") as f:
        f.write(json.dumps({"audio_filepath": "clips/missing.wav", "text": "missing"}) + "\n")
        f.write(json.dumps({"audio_filepath": "clips/broken.wav", "text": "broken"}) + "\n")
    return manifest


def test_missing_or_unreadable_audio_stops_datagen_naming_the_file(tmp_path):
    problem = SpeechManifest(train_manifest=str(bad_manifest(tmp_path)),
                             validation_manifest=str(bad_manifest(tmp_path / "valid")))
    with pytest.raises(UserError, match=r"missing\.wav: audio file not found.*on_bad_example=skip"):
        datagen.generate(problem, tmp_path / "data", progress=False)


def test_missing_and_unreadable_audio_are_skipped_and_counted_when_asked(tmp_path):
    validation = write_manifest(tmp_path / "valid", {"v.wav": "valid"})
    problem = SpeechManifest(train_manifest=str(bad_manifest(tmp_path)),
                             validation_manifest=str(validation))
    problem_dir = datagen.generate(problem, tmp_path / "data", on_bad_example="skip",
                                progress=False)
    train = data.read_meta(problem_dir)["splits"]["train"]
    assert train["count"] == 10 and train["dropped"]["bad"] == 2
    assert any("missing.wav" in reason for reason in train["bad_examples"])
    assert any("broken.wav" in reason for reason in train["bad_examples"])


@pytest.mark.parametrize("line, message", [
    ("{not json", "invalid JSON"),
    ('{"text": "no audio"}', "no 'audio_filepath' field"),
    ('{"audio_filepath": "clips/0.wav"}', "no 'text' string field"),
])
def test_malformed_manifest_line_names_path_and_line(tmp_path, line, message):
    manifest = write_manifest(tmp_path, {"0.wav": "zero", "1.wav": "one"})
    with open(manifest, "a") as f:
        f.write("\n" + line + "\n")  # line 3 is blank, line 4 is bad
    with pytest.raises(UserError, match=f"{manifest}:4: {message}"):
        read_manifest(manifest)


def test_manifest_options_are_checked():
    with pytest.raises(UserError, match="problem.manifest"):
        list(SpeechManifest().generate_samples("train"))
    with pytest.raises(UserError, match="not both"):
        SpeechManifest(manifest="a.jsonl", train_manifest="b.jsonl")


# -- spoken_digits_fsdd ---------------------------------------------------------------------------


@pytest.fixture
def fsdd_dir() -> Path:
    return dataset_dir("fsdd")


def test_fsdd_test_speakers_are_held_out_and_takes_are_disjoint(fsdd_dir):
    problem = SpokenDigitsFsdd(raw_dir=str(fsdd_dir), test_speakers=["lucas"])
    pools = {split: problem._pool(split) for split in problem.splits}
    assert set(pools["test"]) == {"lucas"}
    assert "lucas" not in pools["train"] and set(pools["train"]) == set(pools["validation"])
    ids = {split: {id(w) for digits in pool.values() for ws in digits.values() for w in ws}
           for split, pool in pools.items()}
    assert not ids["train"] & ids["validation"] and not ids["train"] & ids["test"]
    assert len(ids["test"]) == 500 and len(ids["validation"]) == 4 * 10 * 5


def test_fsdd_utterances_are_one_speakers_digits_with_pauses(fsdd_dir):
    problem = SpokenDigitsFsdd(raw_dir=str(fsdd_dir), eval_size=30)
    recordings = problem.recordings()
    samples = list(problem.generate_samples("test"))
    assert len(samples) == 30
    for sample in samples:
        words = sample["targets"].split()
        assert 1 <= len(words) <= 7 and set(words) <= set(WORDS)
        waveform, rate = sample["inputs"]
        assert rate == 8000
        # Each recording is in the audio, in order, from the test speaker.
        position = 0
        for word in words:
            takes = [w for _, w in recordings[("george", WORDS.index(word))]]
            found = [_find(waveform, take, position) for take in takes]
            starts = [f for f in found if f is not None]
            assert starts, sample["targets"]
            position = min(starts) + 1
    again = [s["targets"] for s in SpokenDigitsFsdd(raw_dir=str(fsdd_dir),
                                                    eval_size=30).generate_samples("test")]
    assert again == [s["targets"] for s in samples]


def _find(haystack: np.ndarray, needle: np.ndarray, start: int) -> int | None:
    """First index >= start where needle occurs exactly in haystack."""
    candidates = np.flatnonzero(haystack[start:len(haystack) - len(needle) + 1] == needle[0])
    for index in candidates + start:
        if np.array_equal(haystack[index:index + len(needle)], needle):
            return int(index)
    return None


def test_fsdd_unknown_test_speaker_is_a_clear_error(fsdd_dir):
    with pytest.raises(UserError, match="test_speakers.*george, jackson"):
        SpokenDigitsFsdd(raw_dir=str(fsdd_dir), test_speakers=["nobody"]).recordings()


def test_fsdd_offline_without_files_names_the_raw_dir_option_and_url(tmp_path, monkeypatch):
    monkeypatch.setattr(problems.fsdd, "FSDD_URL", "http://127.0.0.1:9/fsdd.zip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"127\.0\.0\.1:9/fsdd\.zip.*problem\.raw_dir"):
        list(SpokenDigitsFsdd(raw_dir=str(tmp_path / "empty")).generate_samples("train"))


def test_fsdd_extracts_the_repository_archive(tmp_path, fsdd_dir, monkeypatch):
    """What a download does after fetching: the recordings come out of the zip."""
    import zipfile

    archive = tmp_path / "raw" / "fsdd.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted((fsdd_dir / "recordings").glob("*_jackson_*.wav"))[:40]:
            zipped.write(path, f"free-spoken-digit-dataset-master/recordings/{path.name}")
        zipped.writestr("free-spoken-digit-dataset-master/README.md", "FSDD")
        for path in sorted((fsdd_dir / "recordings").glob("*_george_*.wav"))[:40]:
            zipped.write(path, f"free-spoken-digit-dataset-master/recordings/{path.name}")
    monkeypatch.setattr(problems.fsdd, "download", lambda url, dest, **_: dest)
    problem = SpokenDigitsFsdd(raw_dir=str(tmp_path / "raw"), eval_size=3)
    assert {s for s, _ in problem.recordings()} == {"george", "jackson"}
    assert len(list(problem.generate_samples("test"))) == 3


# -- morse_code -----------------------------------------------------------------------------------


def test_keying_follows_the_standard_timing():
    assert keying("E") == [(True, 1)]
    assert keying("AT") == [(True, 1), (False, 1), (True, 3), (False, 3), (True, 3)]
    assert keying("E E") == [(True, 1), (False, 7), (True, 1)]


def test_morse_samples_are_deterministic_and_use_the_alphabet():
    samples = list(MorseCode(eval_size=20).generate_samples("validation"))
    assert [s["targets"] for s in samples] == [
        s["targets"] for s in MorseCode(eval_size=20).generate_samples("validation")]
    assert [s["targets"] for s in samples] != [
        s["targets"] for s in MorseCode(eval_size=20).generate_samples("test")]
    for sample in samples:
        text, (audio, rate) = sample["targets"], sample["inputs"]
        assert set(text) <= set(CODE) | {" "} and 1 <= len(text.replace(" ", "")) <= 6
        assert audio.dtype == np.float32 and rate == 8000 and np.abs(audio).max() <= 1


def test_morse_alphabet_and_pitch_options_shape_the_samples():
    problem = MorseCode(alphabet="ETAN", min_pitch_hz=700, max_pitch_hz=700, eval_size=20,
                        min_snr_db=40, max_snr_db=40)
    assert problem.alphabet == "ETAN"
    for sample in problem.generate_samples("validation"):
        assert set(sample["targets"]) <= set("ETAN ")
        audio, rate = sample["inputs"]
        spectrum = np.abs(np.fft.rfft(audio))
        assert abs(np.argmax(spectrum) * rate / len(audio) - 700) <= 5
    # The defaults draw the same samples as before these options existed.
    assert [s["targets"] for s in MorseCode(eval_size=3).generate_samples("test")] == [
        s["targets"] for s in MorseCode(alphabet=string.ascii_uppercase + string.digits,
                                        eval_size=3).generate_samples("test")]


@pytest.mark.parametrize("options, message", [
    ({"alphabet": ""}, "alphabet must be letters A-Z and digits"),
    ({"alphabet": "ab"}, "alphabet must be letters A-Z and digits"),
    ({"alphabet": "E?"}, "alphabet must be letters A-Z and digits"),
    ({"min_pitch_hz": 900, "max_pitch_hz": 400}, "min_pitch_hz <= max_pitch_hz"),
    ({"max_pitch_hz": 5000}, r"< sample_rate / 2 \(4000\)"),
])
def test_morse_options_outside_the_code_or_the_band_are_user_errors(options, message):
    with pytest.raises(UserError, match=f"morse_code: .*{message}"):
        MorseCode(**options)


@pytest.mark.parametrize("text, wpm, pitch", [("PARIS", 20, 600), ("SOS 73", 28, 450)])
def test_synthesized_morse_has_the_timing_and_pitch_asked_for(text, wpm, pitch):
    audio = synthesize(text, random.Random(0), 8000, wpm=wpm, pitch=pitch, snr_db=100)
    unit = round(8000 * 1.2 / wpm)
    runs = keying(text)
    # Silence of 1-4 units before and after the keyed runs.
    assert 2 * unit <= len(audio) - sum(units for _, units in runs) * unit <= 8 * unit
    # Envelope: the loudest sample within 40 samples (more than a period) either side.
    loud = np.abs(audio) > 0.01
    envelope = np.convolve(loud, np.ones(81), mode="same") > 0
    starts = np.flatnonzero(np.diff(envelope.astype(int)) == 1)
    assert len(starts) == sum(on for on, _ in runs)  # one start per dot or dash
    keyed_samples = envelope.sum() - 80 * len(starts)  # the envelope widens each tone by 80
    assert abs(keyed_samples - sum(u for on, u in runs if on) * unit) <= 2 * len(starts) * 20
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 8000 / len(audio) - pitch) <= 3


# -- end to end -----------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_train_then_decode_one_wav_file_then_many_in_one_call(tmp_path):
    run_dir = tmp_path / "run"
    result = run_command(
        "t2t-train", "problem=morse_code", "problem.train_size=100", "problem.eval_size=10",
        "model=tiny", "trainer.max_steps=4", "trainer.val_check_interval=4",
        "trainer.enable_progress_bar=false", "data.num_workers=0", "data.max_tokens=4096",
        f"data_dir={tmp_path / 'data'}", f"run_dir={run_dir}", cwd=tmp_path, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()

    sample = next(MorseCode().generate_samples("test"))
    clip = tmp_path / "clip.wav"
    soundfile.write(clip, *sample["inputs"])
    decoded = run_command("t2t-decode", "problem=morse_code", f"ckpt={checkpoint}",
                          f"input_file={clip}", "decode.beam_size=1", "decode.max_length=10",
                          cwd=tmp_path, timeout=120)
    assert decoded.returncode == 0, decoded.stderr[-3000:]
    lines = decoded.stdout.splitlines()
    assert len(lines) == 1, decoded.stdout[-2000:]  # one file in, one transcript out
    assert set(lines[0]) <= set(CODE) | {" "}

    # Many files in one call: a folder (sorted, subfolders too), a glob, a list of paths or a
    # JSONL manifest; one line each, path TAB transcript, in input order; an unreadable file
    # is named on stderr, the rest decoded, and the exit status says some failed.
    folder = tmp_path / "clips"
    (folder / "more").mkdir(parents=True)
    clips = [folder / "b.wav", folder / "a.flac", folder / "more" / "c.wav"]
    for path, sample in zip(clips, MorseCode(eval_size=3).generate_samples("test"), strict=True):
        soundfile.write(path, *sample["inputs"])
    (folder / "notes.md").write_text("not audio, not listed")
    (tmp_path / "clips.txt").write_text("clips/more/c.wav\nclips/b.wav\n")
    (tmp_path / "clips.jsonl").write_text('{"audio_filepath": "clips/a.flac"}\n'
                                          '{"file_name": "clips/more/c.wav"}\n')

    def transcribe(spec) -> tuple[list[tuple[str, ...]], Any]:
        result = run_command("t2t-decode", "problem=morse_code", f"ckpt={checkpoint}",
                             f"input_file={spec}", "decode.beam_size=1", "decode.max_length=10",
                             "decode.batch_size=2", cwd=tmp_path, timeout=120)
        return [tuple(line.split("\t")) for line in result.stdout.splitlines()], result

    by_folder, result = transcribe(folder)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [path for path, _ in by_folder] == [str(folder / "a.flac"), str(folder / "b.wav"),
                                               str(folder / "more" / "c.wav")]
    assert all(set(text) <= set(CODE) | {" "} for _, text in by_folder)
    assert "t2t-decode: 3/3 inputs" in result.stderr
    transcript = {Path(path).name: text for path, text in by_folder}
    by_glob, _ = transcribe(f"{folder}/**/*.wav")
    assert [(Path(p).name, t) for p, t in by_glob] == [("b.wav", transcript["b.wav"]),
                                                      ("c.wav", transcript["c.wav"])]
    by_list, _ = transcribe(tmp_path / "clips.txt")
    assert [(Path(p).name, t) for p, t in by_list] == [("c.wav", transcript["c.wav"]),
                                                      ("b.wav", transcript["b.wav"])]
    by_manifest, _ = transcribe(tmp_path / "clips.jsonl")
    assert [(Path(p).name, t) for p, t in by_manifest] == [("a.flac", transcript["a.flac"]),
                                                          ("c.wav", transcript["c.wav"])]

    (folder / "broken.wav").write_bytes(b"RIFF but not really a wave file")
    with_broken, result = transcribe(folder)
    assert result.returncode == 1
    assert [Path(p).name for p, _ in with_broken] == ["a.flac", "b.wav", "c.wav"]
    assert f"t2t-decode: skipped {folder / 'broken.wav'}: not a readable audio file" in \
        result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: 1 of 4 inputs could not be read (named above); the others were decoded")
    none, result = transcribe(f"{folder}/*.ogg")
    assert result.returncode == 1 and not none
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: input_file={folder}/*.ogg matches no file")
    (tmp_path / "bad.jsonl").write_text('{"file_name": "clips/b.wav"}\n{"label": 3}\n')
    _, result = transcribe(tmp_path / "bad.jsonl")
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'bad.jsonl'}:2: no file_name, path or audio_filepath field naming "
        f"the file")


def test_random_is_not_used_globally():
    """Samples depend on the problem's seed only, not on the global random state."""
    random.seed(1)
    a = [s["targets"] for s in MorseCode(eval_size=5).generate_samples("test")]
    random.seed(2)
    assert a == [s["targets"] for s in MorseCode(eval_size=5).generate_samples("test")]


def test_torchaudio_that_cannot_load_is_one_clear_error(monkeypatch):
    import sys

    from modalities.audio import resample

    for name in [m for m in sys.modules if m == "torchaudio" or m.startswith("torchaudio.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchaudio", None)  # import fails, as on a mismatch
    with pytest.raises(UserError, match=r"torchaudio cannot be loaded with torch .*"
                                        r"pip install -e \. -c constraints\.txt"):
        resample(np.zeros(800, dtype=np.float32), 8000, 16000)
