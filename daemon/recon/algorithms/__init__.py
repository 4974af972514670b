"""Pure reconstruction algorithms (beamforming, FBP and flat-field, the EIT solver, biosignal filters): arrays in, arrays out, no streams or sockets."""
