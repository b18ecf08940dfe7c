"""Pure maths on tensors and arrays: KD losses, the chunked head loss, batching."""
