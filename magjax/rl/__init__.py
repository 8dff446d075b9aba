"""The trainer: advantages, the GRPO and SFT losses, batch packing, the jitted train step."""
