"""Migration operations of our own.

``AlterFieldsTogether`` applies many ``AlterField`` operations as one. Django
clones the whole project state before each operation and re-renders the
altered model after it (for a relation, every model related to it too), so a
migration that only relabels a few hundred fields (``0015_i18n_labels``) took
half of a fresh database's ``migrate``. Together they give the same state and
the same SQL (none, for labels), with one clone and one render per model.
"""

from django.db.migrations.operations.base import Operation
from django.db.migrations.utils import field_is_referenced
from django.db.models import NOT_PROVIDED


class AlterFieldsTogether(Operation):
    reversible = True

    def __init__(self, operations):
        self.operations = list(operations)

    def deconstruct(self):
        return (self.__class__.__qualname__, [self.operations], {})

    def state_forwards(self, app_label, state):
        # ProjectState.alter_field for each one, keeping its relation bookkeeping, with the renders deferred.
        eager_render = {}
        for operation in self.operations:
            key = (app_label, operation.model_name_lower)
            field = operation.field
            if not operation.preserve_default:
                field = field.clone()
                field.default = NOT_PROVIDED
            fields = state.models[key].fields
            if state._relations is not None:
                old_field = fields.pop(operation.name)
                if old_field.is_relation:
                    state.resolve_model_field_relations(key, operation.name, old_field)
                fields[operation.name] = field
                if field.is_relation:
                    state.resolve_model_field_relations(key, operation.name, field)
            else:
                fields[operation.name] = field
            relational = field.is_relation or field_is_referenced(state, key, (operation.name, field))
            eager_render[key] = eager_render.get(key, False) or relational
        for key, relational in eager_render.items():
            state.reload_model(*key, delay=not relational)

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        for operation in self.operations:
            operation.database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        for operation in reversed(self.operations):
            operation.database_backwards(app_label, schema_editor, from_state, to_state)

    def describe(self):
        return f"Alter {len(self.operations)} fields together"

    @property
    def migration_name_fragment(self):
        return "alter_fields_together"
