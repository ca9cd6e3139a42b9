"""The foundation every stage imports: errors, the graph format, text columns, progress,
config files, atomic writes, ownership of outputs, guarded artifact readers, device checks,
flag parsers.

Layers (a test enforces them): pipeline.core <- stage1_encode <- stage2_train <- stage3_infer
<- the app (pipeline.cli, main job, datasets commands, report). A module never imports a
layer above its own."""
