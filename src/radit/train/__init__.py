"""Training: the LM fine-tuning (RA-IT) data builder and loop; (next) the retriever fine-tuning (LSR) loop."""
