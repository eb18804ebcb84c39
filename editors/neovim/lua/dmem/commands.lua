-- What the :Dmem* commands do. Each asks the dmem client attached to the current
-- buffer and shows the answer: markdown in a floating window, or a message.
local compat = require('dmem.compat')

local M = {}

local function client_or_warn(bufnr)
  local client = compat.client(bufnr)
  if client == nil then
    vim.notify('dmem: no dmem-lsp is attached to this buffer (see :checkhealth dmem)', vim.log.levels.WARN)
  end
  return client
end

local function failed(what, err)
  local message = type(err) == 'table' and err.message or tostring(err)
  vim.notify('dmem: ' .. what .. ' failed: ' .. message, vim.log.levels.ERROR)
end

---Show `markdown` in a floating window by the cursor; returns its window.
function M.float(markdown)
  local lines = vim.split(markdown, '\n', { plain = true })
  local _, window = vim.lsp.util.open_floating_preview(lines, 'markdown', {
    border = 'rounded',
    focus_id = 'dmem',
    max_width = math.max(40, math.floor(vim.o.columns * 0.8)),
    max_height = math.max(10, math.floor(vim.o.lines * 0.6)),
  })
  return window
end

function M.explain(first, last)
  local bufnr = vim.api.nvim_get_current_buf()
  local client = client_or_warn(bufnr)
  if not client then
    return
  end
  local params = {
    textDocument = { uri = vim.uri_from_bufnr(bufnr) },
    range = compat.line_range(client, bufnr, first, last),
  }
  vim.notify('dmem: explaining…', vim.log.levels.INFO)
  compat.request(client, 'dmem/explain', params, function(err, result)
    if err then
      return failed('explain', err)
    end
    M.float(result and result.markdown or '')
  end, bufnr)
end

function M.remember(first, last, text)
  local bufnr = vim.api.nvim_get_current_buf()
  local client = client_or_warn(bufnr)
  if not client then
    return
  end
  if text == nil or text == '' then
    text = table.concat(vim.api.nvim_buf_get_lines(bufnr, first - 1, last, false), '\n')
  end
  local command = { command = 'dmem.rememberDebugStep', arguments = { vim.uri_from_bufnr(bufnr), text } }
  compat.request(client, 'workspace/executeCommand', command, function(err, result)
    if err then
      return failed('remember', err)
    end
    local tokens = result and result.tokens or 0
    if tokens > 0 then
      local redacted = result.redacted and #result.redacted > 0 and (' (redacted: ' .. table.concat(result.redacted, ', ') .. ')') or ''
      vim.notify(string.format('dmem: remembered (%d tokens written)%s', tokens, redacted))
    else
      vim.notify('dmem: nothing written: ' .. (result and result.reason or 'memory is off'), vim.log.levels.WARN)
    end
  end, bufnr)
end

---The lines :DmemStatus shows: the server's state (dmem/status), then the page of a
---memoryStatus answer (the server writes it: the same in every editor).
function M.status_lines(status, answer)
  local lines = {
    '# dmem',
    '',
    string.format('- server: **%s** %s', status.state or '?', status.message or ''),
  }
  if status.model then
    table.insert(lines, string.format('- model: `%s`, adapter: `%s`', status.model, status.adapter or ''))
    table.insert(lines, string.format('- device: %s, quantization: %s', status.device or '?', status.quantization or '?'))
  end
  if answer and type(answer.markdown) == 'string' then
    table.insert(lines, '')
    vim.list_extend(lines, vim.split(answer.markdown, '\n', { plain = true }))
  end
  return lines
end

---The store names of `bufnr`'s memory, as the server's memoryStatus answer gives them
---(none when no ready server answers within a second).
function M.stores(bufnr)
  local client = compat.client(bufnr)
  if client == nil or require('dmem').status.state ~= 'ready' then
    return {}
  end
  local command = { command = 'dmem.memoryStatus', arguments = { vim.uri_from_bufnr(bufnr) } }
  local answer = compat.request_sync(client, 'workspace/executeCommand', command, 1000, bufnr)
  local names = {}
  for _, folder in ipairs(answer and answer.folders or {}) do
    for name in pairs(folder.stores or {}) do
      if not vim.tbl_contains(names, name) then
        table.insert(names, name)
      end
    end
  end
  table.sort(names)
  return names
end

function M.status()
  local dmem = require('dmem')
  local bufnr = vim.api.nvim_get_current_buf()
  local client = compat.client(bufnr)
  if client == nil or dmem.status.state ~= 'ready' then
    M.float(table.concat(M.status_lines(dmem.status, nil), '\n'))
    return
  end
  local command = { command = 'dmem.memoryStatus', arguments = { vim.uri_from_bufnr(bufnr) } }
  compat.request(client, 'workspace/executeCommand', command, function(err, result)
    if err then
      return failed('status', err)
    end
    M.float(table.concat(M.status_lines(dmem.status, result), '\n'))
  end, bufnr)
end

---Reset `store` (nil: every store) of the current buffer's workspace folder.
function M.reset(store, sure)
  local bufnr = vim.api.nvim_get_current_buf()
  local client = client_or_warn(bufnr)
  if not client then
    return
  end
  if store ~= nil then -- checked before the question (the server refuses an unknown store anyway)
    local stores = M.stores(bufnr)
    if #stores > 0 and not vim.tbl_contains(stores, store) then
      vim.notify('dmem: no store ' .. store .. '; the stores are ' .. table.concat(stores, ', '), vim.log.levels.ERROR)
      return
    end
  end
  local what = store and ('the ' .. store .. ' store') or 'every store'
  if not sure and vim.fn.confirm('dmem: reset ' .. what .. " of this workspace's memory?", '&Yes\n&No', 2) ~= 1 then
    return
  end
  local command = { command = 'dmem.resetMemory', arguments = { { store = store, folder = vim.uri_from_bufnr(bufnr) } } }
  compat.request(client, 'workspace/executeCommand', command, function(err, result)
    if err then
      return failed('reset', err)
    end
    vim.notify('dmem: reset ' .. table.concat(result and result.stores or {}, ', '))
  end, bufnr)
end

return M
