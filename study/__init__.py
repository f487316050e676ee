from study.timeline import mark as _mark

_mark("python: up, study package imported")
