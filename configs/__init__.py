"""The shipped YAML configs (package data, so a non-editable install has them too; ``echolab configs`` lists them)."""
