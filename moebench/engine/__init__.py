"""The live engine: torch + transformers. The experts hook over cache slots (`executor`), host expert stores and device slot pools (`store`), the CUDA-event clock (`timeline`)."""
