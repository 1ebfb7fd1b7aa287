"""AlterFieldsTogether gives exactly the state the AlterField operations it holds give one by one."""

import pytest
from django.db.migrations.loader import MigrationLoader

from common.migration_operations import AlterFieldsTogether


def _fields(state, app_label):
    return {
        (model, name): field.deconstruct()[1:]
        for (app, model), model_state in state.models.items()
        if app == app_label
        for name, field in model_state.fields.items()
    }


@pytest.mark.parametrize(("app_label", "name"), [("exchange", "0015_i18n_labels"), ("listings", "0007_i18n_labels")])
def test_the_label_migrations_reach_the_same_state_as_one_alter_field_at_a_time(app_label, name):
    loader = MigrationLoader(None, ignore_no_migrations=True)
    migration = loader.get_migration(app_label, name)
    together = [op for op in migration.operations if isinstance(op, AlterFieldsTogether)]
    assert len(together) == 1 and len(together[0].operations) > 50
    before = loader.project_state(nodes=[(app_label, name)], at_end=False)
    one_by_one, at_once = before.clone(), before.clone()
    for operation in together[0].operations:
        operation.state_forwards(app_label, one_by_one)
    together[0].state_forwards(app_label, at_once)
    assert _fields(at_once, app_label) == _fields(one_by_one, app_label)
    assert _fields(at_once, app_label) != _fields(before, app_label)  # the labels did change
    # Rendered, the models carry the new labels.
    for operation in together[0].operations[:20]:
        model = at_once.apps.get_model(app_label, operation.model_name)
        assert model._meta.get_field(operation.name).verbose_name == operation.field.verbose_name
