"""`magjax bench accelerator`'s checks, run here on the CPU backend (the same code a GPU or
TPU runs): the bfloat16-vs-float32 log-prob comparison and the chip-peak lookup."""

from magjax.bench import accelerator


def test_bfloat16_logprobs_are_compared_with_a_float32_reference_of_the_same_weights():
    gap = accelerator.logprob_gap("tiny", rows=2, seq=32)
    assert gap["tokens"] == 2 * 32
    # bfloat16 rounding moves log-probs a little, never by nothing and never by a bug's margin.
    assert 0 < gap["mean_abs_gap"] <= gap["limit"] and gap["ok"]
    assert gap["max_abs_gap"] >= gap["mean_abs_gap"]


def test_chip_peaks_are_looked_up_by_device_kind():
    assert accelerator.chip_peak("NVIDIA H200") == 989e12
    assert accelerator.chip_peak("TPU v5 lite") == 197e12  # v5e, not v5p
    assert accelerator.chip_peak("TPU v5p") == 459e12
    assert accelerator.chip_peak("cpu") is None
