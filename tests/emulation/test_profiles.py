"""Device and link profiles: the shipped ones load, bad files get one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddnn.emulation.calibrate import Calibration, calibrate
from ddnn.emulation.cpu import cfs_period_us, quota_bounds
from ddnn.emulation.profiles import (
    DeviceProfile,
    LinkProfile,
    device_profile_names,
    link_profile_names,
    load_device_profile,
    load_link_profile,
)
from ddnn.errors import DdnnError


def test_the_issue_s_profiles_are_shipped():
    assert {"pi-zero-2", "pi3", "pi4", "jetson-nano-cpu"} <= set(device_profile_names())
    assert {"ethernet-100", "wifi", "wifi-weak", "lte"} <= set(link_profile_names())


@pytest.mark.parametrize("name", device_profile_names())
def test_every_shipped_device_profile_loads_and_cites_its_source(name):
    profile = load_device_profile(name)
    assert profile.name == name and profile.gflops > 0 and profile.source
    assert "#" in Path(profile.path).read_text()  # the citation comments


@pytest.mark.parametrize("name", link_profile_names())
def test_every_shipped_link_profile_loads_and_cites_its_source(name):
    profile = load_link_profile(name)
    assert profile.name == name and profile.rate_mbit > 0 and profile.delay_ms >= 0
    assert "Uncertainty" in Path(profile.path).read_text()


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(DdnnError, match=r"unknown device profile 'pi9'; known: .*pi3"):
        load_device_profile("pi9")
    with pytest.raises(DdnnError, match=r"unknown link profile 'carrier-pigeon'; known: .*wifi"):
        load_link_profile("carrier-pigeon")


def test_a_user_file_works(tmp_path):
    path = tmp_path / "myboard.toml"
    path.write_text('description = "mine"\ngflops = 1.5\ncores = 2\nram_mb = 256\nsource = "me"\n')
    profile = load_device_profile(str(path))
    assert profile == DeviceProfile("myboard", "mine", 1.5, 2, 256, "me", str(path))
    link = tmp_path / "sat.toml"
    link.write_text('description = "x"\nrate_mbit = 2\ndelay_ms = 300\nsource = "y"\n')
    assert load_link_profile(link) == LinkProfile("sat", "x", 2.0, 300.0, "y", str(link))


def test_a_missing_field_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('description = "x"\ncores = 2\nram_mb = 256\nsource = "me"\n')
    with pytest.raises(DdnnError) as caught:
        load_device_profile(path)
    message = str(caught.value)
    assert str(path) in message and "'gflops'" in message and "\n" not in message


def test_a_wrong_type_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('description = "x"\nrate_mbit = "fast"\ndelay_ms = 1\nsource = "y"\n')
    with pytest.raises(DdnnError, match=r"bad\.toml\.rate_mbit: expected a number") as caught:
        load_link_profile(path)
    assert "\n" not in str(caught.value)


def test_an_unknown_key_and_a_nonsense_value_are_refused(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('description = "x"\nrate_mbit = 2\ndelay_ms = 1\nsource = "y"\nloss = 1\n')
    with pytest.raises(DdnnError, match=r"unknown key\(s\) \['loss'\]"):
        load_link_profile(path)
    path.write_text('description = "x"\nrate_mbit = 0\ndelay_ms = 1\nsource = "y"\n')
    with pytest.raises(DdnnError, match="rate_mbit must be positive"):
        load_link_profile(path)
    path.write_text("description = \n")
    with pytest.raises(DdnnError, match="not valid TOML"):
        load_link_profile(path)


def test_the_quota_is_the_device_s_speed_over_the_host_s():
    cal = Calibration(host_gflops=100.0)
    assert cal.quota_cores(load_device_profile("pi3")) == pytest.approx(2.5 / 100)
    assert cal.quota_cores(load_device_profile("pi4")) == pytest.approx(6 / 100)
    assert cal.slowdown(load_device_profile("pi3")) == pytest.approx(100 / 2.5)


def test_a_quota_cgroups_cannot_express_is_clamped_with_a_warning(caplog):
    low, high = quota_bounds()
    tiny = DeviceProfile("tiny", "an MCU", 0.0001, 1, 1, "test")
    assert Calibration(host_gflops=100.0).quota_cores(tiny) == low
    huge = DeviceProfile("huge", "a server", 1e6, 64, 1, "test")
    assert Calibration(host_gflops=100.0).quota_cores(huge) == high
    assert "cgroups can give" in caplog.text


def test_small_quotas_get_short_periods_and_at_least_one_ms():
    assert cfs_period_us(0.5) == 10_000  # 5 ms per 10 ms, not 50 per 100
    assert cfs_period_us(0.1) == 10_000
    assert cfs_period_us(0.02) == 50_000  # 1 ms (the kernel's minimum) per 50 ms
    assert cfs_period_us(0.0001) == 1_000_000


def test_calibration_measures_this_host_and_says_how():
    cal = calibrate(repeats=5)
    assert cal.host_gflops > 0.1 and cal.measured_at
    assert "float32" in cal.to_dict()["workload"]
