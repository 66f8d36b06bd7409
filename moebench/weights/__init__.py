"""Expert weights on the host: `store` (pinned host stores, device slot pools, the slot-experts proxy) and `mxfp4` (packed GPT-OSS experts, unpacked on the device)."""
