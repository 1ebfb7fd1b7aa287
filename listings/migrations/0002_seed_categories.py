from django.db import migrations

# The twelve industry categories of the Global Big Data Exchange (Guiyang).
CATEGORIES = [
    ("government", "Government", "政府"),
    ("medical", "Medical", "医疗"),
    ("finance", "Finance", "金融"),
    ("enterprise", "Enterprise", "企业"),
    ("e-commerce", "E-commerce", "电商"),
    ("energy", "Energy", "能源"),
    ("transport", "Transport", "交通"),
    ("commodities", "Commodities", "商品"),
    ("consumption", "Consumption", "消费"),
    ("education", "Education", "教育"),
    ("social", "Social", "社交"),
    ("society", "Society", "社会"),
]


def seed(apps, schema_editor):
    Category = apps.get_model("listings", "Category")
    for position, (slug, name, name_zh) in enumerate(CATEGORIES):
        Category.objects.update_or_create(slug=slug, defaults={"name": name, "name_zh": name_zh, "position": position})


def unseed(apps, schema_editor):
    apps.get_model("listings", "Category").objects.filter(slug__in=[c[0] for c in CATEGORIES]).delete()


class Migration(migrations.Migration):
    dependencies = [("listings", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
