"""``[recon.settings.<modality>]`` is typed: each reconstructor's ``Settings`` model rejects a
misspelt or wrong-typed key with its location, in the config check, at construction and in
``medacq check-config``."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from medacq.daemon.acquisition.devices import check_devices
from medacq.daemon.common.config import ConfigError, parse_config
from medacq.daemon.recon.base import Reconstructor
from medacq.daemon.recon.registry import RECONSTRUCTORS, check_recon_settings, reconstructor_class
from medacq.protocols.stream import StreamDescriptor

from conftest import run_medacq

# one plausible typo per modality (the key a user meant, misspelt or borrowed from the device)
TYPOS = {"synthetic": "alpah", "us": "angles", "eeg": "windows_s", "ekg": "hr_leads", "meg": "notch",
         "xray": "publish_evry", "ct": "output_sz", "eit": "lambda", "mri": "combne", "pet": "iteratons",
         "spect": "subset", "thermal": "emisivity", "photo": "gama", "endoscope": "white_balanse",
         "tactile": "treshold", "swe": "axial_windw"}


def test_every_registered_modality_has_a_strict_settings_model_with_documented_defaults():
    assert set(TYPOS) == set(RECONSTRUCTORS)
    for modality in RECONSTRUCTORS:
        cls = reconstructor_class(modality)
        assert issubclass(cls, Reconstructor) and issubclass(cls.Settings, BaseModel), modality
        assert cls.Settings.model_config.get("extra") == "forbid", modality
        s = cls.Settings()  # every field has a default
        assert cls.validate_settings({}) == s and cls.validate_settings(s) is s
        undocumented = [n for n, f in cls.Settings.model_fields.items() if not f.description]
        assert undocumented == [], (modality, undocumented)


@pytest.mark.parametrize("modality", sorted(TYPOS))
def test_a_settings_typo_is_rejected_with_its_location(modality):
    key = TYPOS[modality]
    data = {"recon": {"settings": {modality: {key: 1}}}}
    assert check_recon_settings(data) == [(f"recon.settings.{modality}.{key}", "Extra inputs are not permitted (got 1)")]
    with pytest.raises(ConfigError) as exc:
        parse_config(data, "rig.toml", (check_devices, check_recon_settings))
    assert [loc for loc, _ in exc.value.problems] == [f"recon.settings.{modality}.{key}"]
    # built directly (tests, benchmarks), the reconstructor validates too, before reading its descriptor
    desc = StreamDescriptor(stream="s", modality=modality, dtype="<f4", shape=[2, 2], axes=["a", "b"])
    with pytest.raises(ValidationError, match=key):
        reconstructor_class(modality)(desc, {key: 1})


def test_values_are_checked_and_converted():
    bad = {"us": {"nx": "wide", "backend": "opencl"},
           "eit": {"prior": "tikhonov", "n_ref": 0}, "ct": {"filter": "parzen"}, "synthetic": {"alpha": 2},
           "eeg": {"band": [40, 1]}, "xray": {"publish_every": 0}}
    locs = {loc for loc, _ in check_recon_settings({"recon": {"settings": bad}})}
    assert locs == {"recon.settings.us.nx", "recon.settings.us.backend",
                    "recon.settings.eit.prior", "recon.settings.eit.n_ref", "recon.settings.ct.filter",
                    "recon.settings.synthetic.alpha", "recon.settings.eeg.band", "recon.settings.xray.publish_every"}
    extent = check_recon_settings({"recon": {"settings": {"us": {"x_min_mm": 5, "x_max_mm": -5}}}})
    assert len(extent) == 1 and extent[0][0] == "recon.settings.us" and "extent" in extent[0][1]
    ok = {"us": {"nx": 64, "f_number": 2}, "eeg": {"band": [], "notch_hz": 0}, "ekg": {"band": [0.5, 30]},
          "eit": {"cache": False}, "ct": {"output_size": 128, "cache_dir": "/tmp/x"}, "xray": {"log": True}}
    assert check_recon_settings({"recon": {"settings": ok}}) == []
    eeg = reconstructor_class("eeg").validate_settings(ok["eeg"])
    assert eeg.band is None and eeg.notch_hz == 0 and eeg.window_s == 2.0
    assert reconstructor_class("meg").Settings().band == (1.0, 80.0)
    assert reconstructor_class("us").validate_settings(ok["us"]).f_number == 2.0


def test_unknown_modality_and_malformed_sections():
    probs = check_recon_settings({"recon": {"settings": {"ultrasound": {"nx": 64}}}})
    assert len(probs) == 1 and probs[0][0] == "recon.settings.ultrasound" and "known modalities" in probs[0][1]
    # structure is the structural check's business: no crash, no double report
    for data in ({}, {"recon": 5}, {"recon": {"settings": 5}}, {"recon": {"settings": {"us": 5}}}):
        assert check_recon_settings(data) == []


def test_check_config_reports_recon_settings_problems(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[recon.settings.us]\nangles = 3\nnx = 64\n\n[recon.settings.eit]\nlamb = -1\n\n'
                   '[recon.settings.toaster]\nslots = 2\n')
    r = run_medacq("check-config", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert str(bad) in lines[0] and "3 problem(s)" in lines[0]
    problems = {ln.strip().split(":")[0] for ln in lines[1:]}
    assert problems == {"recon.settings.us.angles", "recon.settings.eit.lamb", "recon.settings.toaster"}
    good = tmp_path / "good.toml"
    good.write_text('[recon.settings.us]\nnx = 64\nigtl_port = 0\n')
    r = run_medacq("check-config", str(good))
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr
