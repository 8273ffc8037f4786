"""One ComponentResource per concern of the serving stack; conventions in `naming`."""
