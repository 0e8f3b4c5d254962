"""What only decoding needs: the beam search, the pure-tensor decoder step, vocabulary shortlists, int8."""
