"""Device physics shared by simulators and reconstruction (the EIT FEM). Drivers never import it."""
