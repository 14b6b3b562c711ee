"""The Parquet sink of featurize's cache and label's output: Ray's ParquetDatasink, with rows
kept in the order they reach each write task and files that appear only when complete.

Ray 2.60's ParquetDatasink hands a write task's blocks to `pyarrow.dataset.write_dataset`
with `use_threads=True`, which may reorder them inside a file (seen: featurize's cache
came out in a different row order from run to run, so cached and end-to-end training
saw different batches). Here the blocks are concatenated and written with
`pyarrow.parquet.write_table`, in order.
"""

from __future__ import annotations


def ordered_parquet_datasink(path: str, rows_per_file: int, *, schema=None, row_group_rows: int | None = None):
    """A Ray Datasink writing Parquet under `path` (local path or pyarrow.fs URI).

    Each write task gets at least `rows_per_file` rows (Ray bundles blocks up to it) and
    writes them as files of `rows_per_file` rows, `<task file name>-<i:06d>.parquet` (Ray's
    pending-checkpoint recovery matches data files by that prefix), each first written as
    `.<name>.inprogress` and renamed when complete. Rows keep the order of the blocks the
    task received; with `preserve_order` on the dataset's context, that is the dataset's
    order and the file names sort the same way. `schema`: cast every block to it (None:
    the blocks' unified schema). `row_group_rows`: Parquet row-group size (readers split a
    file into blocks by row group); None: pyarrow's default.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray.data._internal.datasource.parquet_datasink import ParquetDatasink

    class OrderedParquetDatasink(ParquetDatasink):
        def _write_parquet_files(self, tables, filename, output_schema, write_uuid, write_kwargs, partitioning_flavor):
            template = self._get_basename_template(filename, write_uuid)
            table = pa.concat_tables([t.select(output_schema.names).cast(output_schema) for t in tables])
            for i, offset in enumerate(range(0, table.num_rows, rows_per_file)):
                name = template.replace("{i}", f"{i:06d}")  # zero-padded: names sort in row order
                final, tmp = f"{self.path}/{name}", f"{self.path}/.{name}.inprogress"
                with self.filesystem.open_output_stream(tmp) as f:
                    pq.write_table(table.slice(offset, rows_per_file), f, row_group_size=row_group_rows)
                self.filesystem.move(tmp, final)

    args = {"schema": schema} if schema is not None else {}
    return OrderedParquetDatasink(path, arrow_parquet_args=args, min_rows_per_file=rows_per_file)
