-- Feature detection in one place. dmem runs on Neovim 0.7 to 0.12, and their LSP APIs
-- differ: methods are called with `:` from 0.11 on, clients are listed by
-- vim.lsp.get_clients from 0.10 on, vim.lsp.start exists from 0.8 on, and a synchronous
-- request's answer holds its failure as `err` on some versions and `error` on others.
local M = {}

local function has(version)
  return vim.fn.has('nvim-' .. version) == 1
end

M.has = has
M.uv = vim.uv or vim.loop
M.methods = has('0.11') -- client:request() rather than client.request()

---Every running dmem client, or those attached to `bufnr`.
function M.clients(bufnr)
  if vim.lsp.get_clients then
    return vim.lsp.get_clients({ name = 'dmem', bufnr = bufnr })
  end
  local found = {}
  local all = bufnr and vim.lsp.buf_get_clients(bufnr) or vim.lsp.get_active_clients()
  for _, client in pairs(all) do
    if client.name == 'dmem' then
      table.insert(found, client)
    end
  end
  return found
end

---The dmem client attached to `bufnr` (0: the current buffer), or nil.
function M.client(bufnr)
  if bufnr == nil or bufnr == 0 then
    bufnr = vim.api.nvim_get_current_buf()
  end
  return M.clients(bufnr)[1]
end

function M.request(client, method, params, handler, bufnr)
  if M.methods then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

function M.notify(client, method, params)
  if M.methods then
    return client:notify(method, params)
  end
  return client.notify(method, params)
end

function M.cancel(client, id)
  if M.methods then
    return client:cancel_request(id)
  end
  return client.cancel_request(id)
end

---A request answered within `timeout_ms`: result, failure message.
function M.request_sync(client, method, params, timeout_ms, bufnr)
  local response, failure
  if M.methods then
    response, failure = client:request_sync(method, params, timeout_ms, bufnr)
  else
    response, failure = client.request_sync(method, params, timeout_ms, bufnr)
  end
  if not response then
    return nil, failure or ('no answer to ' .. method)
  end
  local err = response.err or response.error -- 0.7 and later versions differ
  if err then
    return nil, type(err) == 'table' and err.message or tostring(err)
  end
  return response.result, nil
end

function M.encoding(client)
  return client.offset_encoding or 'utf-16'
end

---Cursor position params in the client's own encoding.
function M.position_params(client, window)
  return vim.lsp.util.make_position_params(window or 0, M.encoding(client))
end

---A range over whole lines `first`..`last` (1-based, inclusive) in the client's encoding.
function M.line_range(client, bufnr, first, last)
  local text = vim.api.nvim_buf_get_lines(bufnr, last - 1, last, false)[1] or ''
  local character = vim.lsp.util.character_offset(bufnr, last - 1, #text, M.encoding(client))
  return { start = { line = first - 1, character = 0 }, ['end'] = { line = last - 1, character = character } }
end

---The key `key` as typed (for an expr mapping that falls back to it).
function M.keys(key)
  return vim.api.nvim_replace_termcodes(key, true, false, true)
end

---vim.health's functions under their current names (0.7-0.9 call them report_*).
function M.health()
  local health = vim.health or require('health')
  return {
    start = health.start or health.report_start,
    ok = health.ok or health.report_ok,
    info = health.info or health.report_info,
    warn = health.warn or health.report_warn,
    error = health.error or health.report_error,
  }
end

return M
