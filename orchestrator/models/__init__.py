"""Models that ship with the package (`${package:models/NAME}` in conf/model/)."""
