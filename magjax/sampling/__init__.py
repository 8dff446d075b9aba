"""The policy functions (jitted prefill and decode over a slot KV cache) and the host-side
generator loop that keeps every slot busy."""
