# Hand-written fixture migration (not generated at test time).
import django.db.models.deletion
from django.db import migrations, models


def seed(apps, schema_editor):
    Category = apps.get_model("shop", "Category")
    Product = apps.get_model("shop", "Product")
    tools = Category.objects.create(name="tools")
    toys = Category.objects.create(name="toys")
    Product.objects.bulk_create(
        [
            Product(name="hammer", price=12, category=tools),
            Product(name="wrench", price=9, category=tools),
            Product(name="kite", price=25, category=toys),
        ]
    )


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Category",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=50)),
            ],
        ),
        migrations.CreateModel(
            name="Product",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=40)),
                ("price", models.IntegerField()),
                (
                    "category",
                    models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, to="shop.category"),
                ),
            ],
        ),
        # Populate the tables so that 0002/0003 work on existing rows.
        migrations.RunPython(seed, migrations.RunPython.noop),
    ]
