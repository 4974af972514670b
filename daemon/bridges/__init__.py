"""Other ways out of the rig: the live web view (``view``, with its page in ``view_static/``) and the Lab Streaming Layer bridge (``lsl``)."""
